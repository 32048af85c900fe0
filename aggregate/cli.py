"""The ``aggregate`` command: run the service, and client verbs for people.

Exit codes: 0 success; 1 the service answered with an error (a rejection, a conflict, not
found, ...) or is not ready; 2 bad usage or configuration; 3 the service or NATS could not be
reached; 141 (128 + SIGPIPE) when the reader of the output went away (``| head``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregate import __version__
from aggregate.config.values import LOG_LEVELS
from aggregate.domain.errors import (
    AggregateError,
    AggregateNotFoundError,
    BackendUnavailableError,
    ConfigError,
)
from aggregate.domain.ids import AggregateKey, parse_uuid, uuid7, validate_aggregate_type
from aggregate.domain.status import status_of

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence

    from aggregate.config import Settings

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
EXAMPLES = ("bank", "billing")


class UsageError(Exception):
    """The command line is wrong in a way argparse cannot see (exit code 2)."""


def _settings(args: argparse.Namespace) -> Settings:
    from aggregate.config import example_manifest_path, load_settings

    overrides: dict[str, str] = {}
    names: dict[str, str] = {}
    if getattr(args, "example", None) and getattr(args, "manifest", None):
        raise UsageError("give --example or --manifest, not both")
    if getattr(args, "example", None):
        overrides["AGGREGATE_MANIFEST_PATH"] = str(example_manifest_path(args.example))
        names["AGGREGATE_MANIFEST_PATH"] = "--example"
    for option, variable in (
        ("config", "AGGREGATE_CONFIG_PATH"),
        ("manifest", "AGGREGATE_MANIFEST_PATH"),
        ("storage", "AGGREGATE_STORAGE_PATH"),
        ("nats_url", "AGGREGATE_NATS_URL"),
        ("grpc_addr", "AGGREGATE_GRPC_ADDR"),
        ("http_addr", "AGGREGATE_HTTP_ADDR"),
        ("log_level", "AGGREGATE_LOG_LEVEL"),
    ):
        value = getattr(args, option, None)
        if value is not None:
            overrides[variable] = str(value)
            names[variable] = "--" + option.replace("_", "-")
    return load_settings(overrides=overrides, option_names=names)


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))
    sys.stdout.flush()  # a closed pipe fails here, where main() handles it


def _host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _field(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


# ---- verbs -----------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from aggregate.adapters.logging import configure_logging
    from aggregate.service.main import run

    settings = _settings(args)
    settings.storage_path.mkdir(parents=True, exist_ok=True)
    setup = configure_logging(
        settings.log_level, settings.logger_socket, library_level=settings.library_log_level
    )
    sink = setup.socket
    return run(settings, log_drops=(lambda: float(sink.dropped)) if sink else None)


def cmd_submit(args: argparse.Namespace) -> int:
    from aggregate.adapters.grpc import client

    if args.json is not None:
        try:
            payload = json.loads(args.json)
        except ValueError as exc:
            raise UsageError(f"--json is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise UsageError("--json must be a JSON object")
        if args.command_type:
            payload["type"] = args.command_type
    elif args.command_type:
        payload = {"type": args.command_type}
    else:
        raise UsageError("give the command type (positional) or --json")
    payload.update(dict(args.fields))
    aggregate_id = str(args.id) if args.id else str(uuid7())
    host, port = args.addr
    _print(
        client.submit(
            host,
            port,
            aggregate_type=args.type,
            aggregate_id=aggregate_id,
            command_id=str(args.command_id or uuid7()),
            payload=payload,
            tenant_id=args.tenant,
            expected_version=args.expected_version,
            timeout=args.timeout,
        )
    )
    return EXIT_OK


def cmd_get(args: argparse.Namespace) -> int:
    from aggregate.adapters.grpc import client

    host, port = args.addr
    _print(
        client.get(
            host,
            port,
            aggregate_type=args.type,
            aggregate_id=str(args.id),
            tenant_id=args.tenant,
            timeout=args.timeout,
        )
    )
    return EXIT_OK


def _nats_url(settings: Settings) -> str:
    """The NATS URL(s) as the service finds them: the setting, or the embedded server's
    URL file under the storage path."""
    url = settings.nats_url
    if settings.nats_embedded:
        url_file = settings.storage_path / "embedded-nats.url"
        if not url_file.exists():
            raise BackendUnavailableError(
                f"no embedded NATS URL at {url_file}: is `aggregate serve` running with this "
                "storage path? Or pass --nats-url"
            )
        url = url_file.read_text().strip()
    return url


def cmd_events(args: argparse.Namespace) -> int:
    from aggregate.adapters.jetstream.reader import read_events
    from aggregate.domain.ids import DEFAULT_TENANT, validate_tenant_id

    settings = _settings(args)
    url = _nats_url(settings)
    tenant = validate_tenant_id(args.tenant or settings.default_tenant_id or DEFAULT_TENANT)
    key = AggregateKey(tenant, args.type, args.id)
    events = read_events(url.split(","), settings.stream_name, key, timeout=args.timeout)
    if not events:
        raise AggregateNotFoundError(f"aggregate {key} not found")
    _print(events)
    return EXIT_OK


def cmd_ready(args: argparse.Namespace) -> int:
    from aggregate.adapters.admin_probe import probe_address, probe_ready

    host, port = probe_address(*_settings(args).http_bind)
    if probe_ready(host, port, timeout=args.timeout):
        print("ready")
        return EXIT_OK
    print("not ready", file=sys.stderr)
    return EXIT_REFUSED


# ---- parser ----------------------------------------------------------------------------
def _aggregate_type(value: str) -> str:
    try:
        return validate_aggregate_type(value)
    except AggregateError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _uuid(value: str) -> uuid.UUID:
    try:
        return parse_uuid(value, "id")
    except AggregateError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _position(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {value[:32]!r}")
    return number


def _config_options(p: argparse.ArgumentParser, *, example: str | None) -> None:
    p.add_argument(
        "--config", type=Path, help="config file (YAML/TOML/JSON); sets AGGREGATE_CONFIG_PATH"
    )
    if example is not None:
        p.add_argument("--example", choices=EXAMPLES, help=example)
    p.add_argument("--storage", type=Path, help="storage path (AGGREGATE_STORAGE_PATH)")
    p.add_argument("--nats-url", help="NATS URL(s), or 'embedded' (AGGREGATE_NATS_URL)")


def _manifest_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--manifest", type=Path, help="aggregate-type manifest file (AGGREGATE_MANIFEST_PATH)"
    )


def _log_level_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        type=str.lower,
        choices=(*LOG_LEVELS, "warn"),
        metavar="LEVEL",
        help=f"{', '.join(LOG_LEVELS)} (AGGREGATE_LOG_LEVEL)",
    )


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--addr",
        type=_host_port,
        default=("127.0.0.1", 50051),
        help="the service's gRPC HOST:PORT (default 127.0.0.1:50051)",
    )
    p.add_argument(
        "--tenant", help="tenant id (x-tenant-id); default: the service's default tenant"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    p.add_argument("-T", "--type", required=True, type=_aggregate_type, help="aggregate type")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aggregate",
        description="Multi-tenant, event-sourced command service on NATS JetStream.",
        epilog="Exit codes: 0 ok, 1 refused by the service (or not ready), 2 bad usage or "
        "configuration, 3 service or NATS unreachable, 141 output pipe closed. "
        "Configuration: docs/configuration.md.",
    )
    parser.add_argument("--version", action="version", version=f"aggregate {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    # The verbs of each room live beside it (they import this module's helpers).
    from aggregate.cli_check import add_check_verb
    from aggregate.cli_ingest import add_ingest_verb
    from aggregate.cli_read import add_query_verb, add_watch_verb
    from aggregate.cli_shards import add_shard_verbs

    p = verbs.add_parser(
        "serve",
        help="run the service (embedded NATS unless AGGREGATE_NATS_URL is set)",
        description="Run the service until SIGTERM/SIGINT: the first signal drains (or stops a "
        "start-up in progress at once), a second one exits at once. SIGHUP reloads the "
        "programs (as POST /admin/programs/reload). Fails with exit code 3 "
        "when NATS cannot be reached within AGGREGATE_NATS_CONNECT_TIMEOUT_MS.",
    )
    _config_options(p, example="serve a bundled example manifest")
    _manifest_option(p)
    p.add_argument("--grpc-addr", help="gRPC bind HOST:PORT (AGGREGATE_GRPC_ADDR)")
    p.add_argument("--http-addr", help="admin HTTP bind HOST:PORT (AGGREGATE_HTTP_ADDR)")
    _log_level_option(p)
    p.set_defaults(run=cmd_serve)

    p = verbs.add_parser(
        "submit",
        help="submit one command and print the result",
        description="Submit a command over gRPC and print the service's answer as JSON: its "
        "type and NAME=VALUE fields (values are JSON when they parse, else strings), or "
        "--json.",
    )
    _client_options(p)
    p.add_argument("command_type", nargs="?", help="the command's type, e.g. Deposit")
    p.add_argument("fields", nargs="*", type=_field, metavar="NAME=VALUE", help="payload fields")
    p.add_argument("--json", help="the whole payload as a JSON object")
    p.add_argument(
        "--id", type=_uuid, help="aggregate id (default: a new UUIDv7 = a new aggregate)"
    )
    p.add_argument(
        "--command-id",
        type=_uuid,
        help="command id (default: a new UUIDv7); reuse it to retry safely",
    )
    p.add_argument(
        "--expected-version", type=int, help="refuse unless the aggregate is at this version"
    )
    p.set_defaults(run=cmd_submit)

    p = verbs.add_parser(
        "get",
        help="print an aggregate's state and version",
        description="Ask the service over gRPC for an aggregate's current state and version "
        "and print them as JSON. An aggregate with no events is NOT_FOUND (exit code 1).",
    )
    _client_options(p)
    p.add_argument("--id", type=_uuid, required=True, help="aggregate id")
    p.set_defaults(run=cmd_get)

    add_query_verb(verbs)

    p = verbs.add_parser(
        "events",
        help="print an aggregate's events (read from JetStream)",
        description="Read an aggregate's events straight from the JetStream stream (not "
        "through the service) and print them as JSON, each with its stream sequence and "
        "command id. NATS is found as the service finds it: AGGREGATE_NATS_URL or --nats-url, "
        "or, when embedded, the URL the running service wrote under the storage path. An "
        "aggregate with no events is NOT_FOUND (exit code 1).",
    )
    _config_options(p, example=None)
    p.add_argument("--tenant", help="tenant id (default: the default tenant)")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for NATS, then exit code 3 (default 10)",
    )
    p.add_argument("-T", "--type", required=True, type=_aggregate_type, help="aggregate type")
    p.add_argument("--id", type=_uuid, required=True, help="aggregate id")
    p.set_defaults(run=cmd_events)

    add_check_verb(verbs)
    add_watch_verb(verbs)
    add_shard_verbs(verbs)
    add_ingest_verb(verbs)

    p = verbs.add_parser(
        "ready",
        help="ask a running service whether it is ready (health checks)",
        description="GET /ready from the admin HTTP server at the configured address "
        "(AGGREGATE_HTTP_ADDR or the config file; a wildcard bind is reached on loopback). "
        "Exit code 0 ready, 1 not ready (starting, draining or NATS down), 3 unreachable.",
    )
    p.add_argument(
        "--config", type=Path, help="config file (YAML/TOML/JSON); sets AGGREGATE_CONFIG_PATH"
    )
    p.add_argument("--http-addr", help="admin HTTP HOST:PORT (AGGREGATE_HTTP_ADDR)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait (default 2)")
    p.set_defaults(run=cmd_ready)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say; exit as a tool killed by
        # SIGPIPE would, and keep the interpreter's final flush from complaining.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    from aggregate.adapters.grpc.client import CallFailedError, ServiceUnreachableError

    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except UsageError as exc:
        print(f"aggregate {args.verb}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"aggregate {args.verb}: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except CallFailedError as exc:
        print(f"aggregate {args.verb}: {exc.status}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except (ServiceUnreachableError, BackendUnavailableError) as exc:
        print(f"aggregate {args.verb}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except AggregateError as exc:
        print(f"aggregate {args.verb}: {status_of(exc)[0]}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    return code


if __name__ == "__main__":
    # ``python -m aggregate.cli``: run the package's module, not this ``__main__`` copy, so
    # the verbs in their own modules (which import ``aggregate.cli``) raise the errors
    # ``_main`` catches.
    from aggregate.cli import main as package_main

    sys.exit(package_main())
