"""The ``aggregate`` command: run the service, and client verbs for people.

Exit codes: 0 success; 1 the service answered with an error (a rejection, a conflict, not
found, ...); 2 bad usage or configuration; 3 the service or NATS could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregate.domain.errors import AggregateError, BackendUnavailableError, ConfigError
from aggregate.domain.ids import AggregateKey, parse_uuid, uuid7, validate_aggregate_type

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence

    from aggregate.config import Settings

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXAMPLES = ("bank", "billing")


def _settings(args: argparse.Namespace) -> Settings:
    from aggregate.config import example_manifest_path, load_settings

    overrides: dict[str, str] = {}
    if getattr(args, "config", None):
        overrides["AGGREGATE_CONFIG_PATH"] = str(args.config)
    if getattr(args, "example", None):
        overrides["AGGREGATE_MANIFEST_PATH"] = str(example_manifest_path(args.example))
    for option, variable in (
        ("storage", "AGGREGATE_STORAGE_PATH"),
        ("nats_url", "AGGREGATE_NATS_URL"),
        ("grpc_addr", "AGGREGATE_GRPC_ADDR"),
        ("http_addr", "AGGREGATE_HTTP_ADDR"),
        ("log_level", "AGGREGATE_LOG_LEVEL"),
    ):
        value = getattr(args, option, None)
        if value is not None:
            overrides[variable] = str(value)
    return load_settings(overrides=overrides)


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


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
    setup = configure_logging(settings.log_level, settings.logger_socket)
    sink = setup.socket
    return run(settings, log_drops=(lambda: float(sink.dropped)) if sink else None)


def cmd_check(args: argparse.Namespace) -> int:
    import trio

    from aggregate.config import manifest_from_settings
    from aggregate.programs.registry import check_manifest, isolation_warnings
    from aggregate.service.core import program_limits

    settings = _settings(args)
    manifest = manifest_from_settings(settings)
    trio.run(lambda: check_manifest(manifest, limits=program_limits(settings)))
    warnings = isolation_warnings(manifest)
    for warning in warnings:
        print(f"aggregate check: WARNING: {warning}", file=sys.stderr)
    _print(
        {
            "ok": True,
            "config": str(settings.config_path) if settings.config_path else None,
            "manifest": manifest.origin,
            "aggregate_types": {
                name: {"language": t.language.value, "isolation": t.isolation.value}
                for name, t in sorted(manifest.types.items())
            },
            "warnings": warnings,
        }
    )
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    from aggregate.adapters.grpc import client

    if args.json is not None:
        try:
            payload = json.loads(args.json)
        except ValueError as exc:
            raise SystemExit(f"aggregate submit: --json is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise SystemExit("aggregate submit: --json must be a JSON object")
        if args.command_type:
            payload["type"] = args.command_type
    elif args.command_type:
        payload = {"type": args.command_type}
    else:
        raise SystemExit("aggregate submit: give the command type (positional) or --json")
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


def cmd_events(args: argparse.Namespace) -> int:
    from aggregate.adapters.jetstream.reader import read_events
    from aggregate.domain.ids import DEFAULT_TENANT, validate_tenant_id

    settings = _settings(args)
    url = settings.nats_url
    if settings.nats_embedded:
        url_file = settings.storage_path / "embedded-nats.url"
        if not url_file.exists():
            raise BackendUnavailableError(
                f"no embedded NATS URL at {url_file}: is `aggregate serve` running with this "
                "storage path? Or pass --nats-url"
            )
        url = url_file.read_text().strip()
    tenant = validate_tenant_id(args.tenant or settings.default_tenant_id or DEFAULT_TENANT)
    key = AggregateKey(tenant, args.type, args.id)
    _print(read_events(url.split(","), settings.stream_name, key, timeout=args.timeout))
    return EXIT_OK


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


def _config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, help="config file (YAML/TOML/JSON); sets AGGREGATE_CONFIG_PATH"
    )
    p.add_argument("--example", choices=EXAMPLES, help="serve a bundled example manifest")
    p.add_argument("--storage", type=Path, help="storage path (AGGREGATE_STORAGE_PATH)")
    p.add_argument("--nats-url", help="NATS URL(s), or 'embedded' (AGGREGATE_NATS_URL)")


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
        epilog="Exit codes: 0 ok, 1 refused by the service, 2 bad usage or configuration, "
        "3 service or NATS unreachable. Configuration: docs/configuration.md.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser(
        "serve",
        help="run the service (embedded NATS unless AGGREGATE_NATS_URL is set)",
        description="Run the service until SIGTERM/SIGINT (a second signal forces exit).",
    )
    _config_options(p)
    p.add_argument("--grpc-addr", help="gRPC bind HOST:PORT (AGGREGATE_GRPC_ADDR)")
    p.add_argument("--http-addr", help="admin HTTP bind HOST:PORT (AGGREGATE_HTTP_ADDR)")
    p.add_argument("--log-level", help="debug, info, warning, error (AGGREGATE_LOG_LEVEL)")
    p.set_defaults(run=cmd_serve)

    p = verbs.add_parser(
        "submit",
        help="submit one command and print the result",
        description="Submit a command: its type and NAME=VALUE fields "
        "(values are JSON when they parse, else strings), or --json.",
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

    p = verbs.add_parser("get", help="print an aggregate's state and version")
    _client_options(p)
    p.add_argument("--id", type=_uuid, required=True, help="aggregate id")
    p.set_defaults(run=cmd_get)

    p = verbs.add_parser("events", help="print an aggregate's events (read from JetStream)")
    _config_options(p)
    p.add_argument("--tenant", help="tenant id (default: the default tenant)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    p.add_argument("-T", "--type", required=True, type=_aggregate_type, help="aggregate type")
    p.add_argument("--id", type=_uuid, required=True, help="aggregate id")
    p.set_defaults(run=cmd_events)

    p = verbs.add_parser("check", help="validate a configuration and compile its programs")
    _config_options(p)
    p.set_defaults(run=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from aggregate.adapters.grpc.client import CallFailedError, ServiceUnreachableError

    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
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
        print(f"aggregate {args.verb}: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    return code


if __name__ == "__main__":
    sys.exit(main())
