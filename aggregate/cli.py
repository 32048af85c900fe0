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
    InvalidArgumentError,
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


def cmd_query(args: argparse.Namespace) -> int:
    from aggregate.adapters.grpc import query_client

    host, port = args.addr

    def emit(view: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(view, separators=(",", ":"), ensure_ascii=False) + "\n")

    token, position = query_client.query(
        host,
        port,
        aggregate_type=args.type,
        filter_text=args.filter,
        order_by=args.order_by,
        page_size=args.page_size,
        page_token=args.page_token,
        min_position=args.min_position,
        every_page=args.all,
        tenant_id=args.tenant,
        timeout=args.timeout,
        emit=emit,
    )
    sys.stdout.flush()
    print(f"position {position}", file=sys.stderr)
    if token:
        print(f"more: --page-token {token}", file=sys.stderr)
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


def _routing(args: argparse.Namespace) -> Any:
    from aggregate.adapters.routing import read_routing

    settings = _settings(args)
    return read_routing(
        _nats_url(settings).split(","),
        directory_bucket=settings.shard_directory_bucket,
        placement_bucket=settings.placement_bucket,
        placement_key=settings.placement_key,
        timeout=args.timeout,
    )


def cmd_shards(args: argparse.Namespace) -> int:
    routing = _routing(args)
    _print([routing.shards[shard].as_dict() for shard in sorted(routing.shards)])
    return EXIT_OK


def cmd_route(args: argparse.Namespace) -> int:
    from aggregate.domain.ids import validate_tenant_id

    tenant = validate_tenant_id(args.tenant_id)
    answer = _routing(args).route(tenant)
    _print(answer)
    return EXIT_OK if answer["live"] else EXIT_REFUSED


def cmd_tenant_move(args: argparse.Namespace) -> int:
    from aggregate.adapters.admin_client import admin_call
    from aggregate.adapters.admin_probe import probe_address
    from aggregate.domain.directory import dial_address
    from aggregate.domain.ids import validate_tenant_id
    from aggregate.domain.placement import validate_shard_id

    settings = _settings(args)
    tenant, shard = validate_tenant_id(args.tenant_id), validate_shard_id(args.to)
    addr = dial_address(*probe_address(*settings.http_bind))
    body: dict[str, Any] = {"to": shard}
    if args.timeout is not None:
        body["timeout_ms"] = int(args.timeout * 1000)
    wait = (args.timeout or settings.move_timeout_seconds) + 5
    status, answer = admin_call(
        addr,
        "POST",
        f"/admin/tenant/{tenant}/move",
        body=body,
        token=settings.admin_token,
        timeout=wait,
    )
    if status != 200:
        reason = answer.get("error") if isinstance(answer, dict) else None
        print(f"aggregate tenant move: HTTP {status}: {reason or answer}", file=sys.stderr)
        return EXIT_REFUSED
    _print(answer)
    return EXIT_OK


def cmd_ingest(args: argparse.Namespace) -> int:
    from aggregate.adapters.logging import configure_logging
    from aggregate.service.ingest_once import run_ingest_once

    if not args.once:
        raise UsageError(
            "give --once (periodic runs are part of `aggregate serve`, every "
            "AGGREGATE_INGEST_INTERVAL_MS)"
        )
    settings = _settings(args)
    configure_logging(settings.log_level, None, library_level=settings.library_log_level)
    try:
        summary = run_ingest_once(settings, args.source)
    except InvalidArgumentError as exc:  # an unknown --source
        raise UsageError(exc.message) from None
    _print(summary)
    return EXIT_OK if summary["ok"] else EXIT_REFUSED


def cmd_watch(args: argparse.Namespace) -> int:
    from aggregate.adapters.grpc import watch_client

    host, port = args.addr

    def line(change: dict[str, Any]) -> None:
        print(json.dumps(change, separators=(",", ":")), flush=True)

    watch_client.watch(
        host,
        port,
        aggregate_type=args.type,
        on_change=line,
        tenant_id=args.tenant,
        aggregate_id=str(args.id) if args.id else "",
        filter_text=args.filter,
        from_position=args.from_position,
        include_state=args.state,
        count=args.count,
        timeout=args.timeout,
    )
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
    p.add_argument(
        "--log-level",
        type=str.lower,
        choices=(*LOG_LEVELS, "warn"),
        metavar="LEVEL",
        help=f"{', '.join(LOG_LEVELS)} (AGGREGATE_LOG_LEVEL)",
    )
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

    p = verbs.add_parser(
        "query",
        help="print the views of an aggregate type that match a filter (JSON lines)",
        description="Ask the service over gRPC (QueryAggregates) for the views of one "
        "aggregate type of a tenant and print one JSON object per line: aggregate_id, "
        "version, position, state. One page unless --all; the position the answer "
        "reflects, and the token of the next page, go to stderr. Filters: docs/queries.md.",
    )
    _client_options(p)
    p.add_argument("filter", nargs="?", default="", help="the filter ('' or omitted: all)")
    p.add_argument("--order-by", default="", help="order, e.g. 'aggregate_id' (the default)")
    p.add_argument(
        "--page-size", type=int, default=0, help="views per page (default: the service's, 50)"
    )
    p.add_argument("--page-token", default="", help="continue from this page token")
    p.add_argument("--all", action="store_true", help="follow the page tokens to the end")
    p.add_argument(
        "--min-position",
        type=int,
        default=0,
        help="wait until the index holds this position (a command's position: read your write)",
    )
    p.set_defaults(run=cmd_query)

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

    from aggregate.cli_check import add_check_verb

    add_check_verb(verbs)

    p = verbs.add_parser(
        "watch",
        help="follow the changes of a type's aggregates as they commit (JSON lines)",
        description="Watch a tenant's aggregates of one type over gRPC (WatchAggregates) and "
        "print each committed change as one JSON line (type, id, version, position, command "
        "id, events; the new state with --state), in position order. Runs until interrupted, "
        "until --count changes arrived, or until the service ends the watch: then exit code "
        "1 and a message with the position to pass to --from to resume without a gap.",
    )
    _client_options(p)
    p.add_argument(
        "--from",
        dest="from_position",
        type=_position,
        default=0,
        metavar="POSITION",
        help="every change after this stream position (default 0: from now)",
    )
    p.add_argument("--id", type=_uuid, help="only this aggregate")
    p.add_argument("--filter", default="", help="only changes whose new view matches")
    p.add_argument("--state", action="store_true", help="include each change's new state")
    p.add_argument("--count", type=_position, help="stop after this many changes")
    p.set_defaults(run=cmd_watch)

    p = verbs.add_parser(
        "shards",
        help="list the live shards of the shard directory (read from NATS KV)",
        description="Read the shard directory (AGGREGATE_SHARD_DIRECTORY_BUCKET) straight "
        "from NATS KV and print its live entries as JSON: shard id, gRPC and admin HTTP "
        "addresses, start time, version. NATS is found as `events` finds it.",
    )
    _config_options(p, example=None)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for NATS")
    p.set_defaults(run=cmd_shards)

    p = verbs.add_parser(
        "route",
        help="print the shard that owns a tenant and its address",
        description="Read the placement map and the shard directory from NATS KV and print "
        "which shard owns TENANT (the map's shard when the map pins it, else its place on "
        "the ring over the live shards) and the owner's gRPC and admin addresses. Exit code "
        "1 when the owner is not live (a pinned tenant whose shard is down).",
    )
    p.add_argument("tenant_id", metavar="TENANT", help="tenant id")
    _config_options(p, example=None)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for NATS")
    p.set_defaults(run=cmd_route)

    p = verbs.add_parser(
        "tenant",
        help="tenant administration (move)",
        description="Tenant administration through a running node's admin HTTP API.",
    )
    tenant_verbs = p.add_subparsers(dest="tenant_verb", required=True, metavar="ACTION")
    p = tenant_verbs.add_parser(
        "move",
        help="move a tenant to another shard, online",
        description="POST /admin/tenant/TENANT/move on the node at AGGREGATE_HTTP_ADDR (or "
        "--http-addr), with AGGREGATE_ADMIN_TOKEN: the owner drains TENANT, the placement "
        "map pins it to SHARD, and the answer comes once SHARD accepts it, with the "
        "unavailability window in ms. Exit code 1 when the move is refused or not finished.",
    )
    p.add_argument("tenant_id", metavar="TENANT", help="tenant id")
    p.add_argument("--to", required=True, metavar="SHARD", help="the shard that takes it")
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds the move may take (default AGGREGATE_MOVE_TIMEOUT_MS)",
    )
    p.add_argument(
        "--config", type=Path, help="config file (YAML/TOML/JSON); sets AGGREGATE_CONFIG_PATH"
    )
    p.add_argument("--http-addr", help="admin HTTP HOST:PORT of any node (AGGREGATE_HTTP_ADDR)")
    p.set_defaults(run=cmd_tenant_move)

    p = verbs.add_parser(
        "ingest",
        help="run usage ingestion once over the configured sources",
        description="Read the configured usage sources (AGGREGATE_INGEST_SOURCES), charge every "
        "new record once to its account's ledger through the command handler, and print the "
        "run summary as JSON. NATS: AGGREGATE_NATS_URL or --nats-url, or, when embedded, the "
        "URL the running `aggregate serve` wrote under the storage path. Exit code 0 when every "
        "source was consumed or skipped, 1 when one halted on a bad record or failed, 2 bad "
        "usage or configuration, 3 NATS unreachable. See docs/ingestion.md.",
    )
    _config_options(p, example="use a bundled example manifest's types (billing: the ledger)")
    _manifest_option(p)
    p.add_argument("--once", action="store_true", help="one run, then exit")
    p.add_argument("--source", help="run only this source (a node name or JetStream source)")
    p.add_argument(
        "--log-level",
        type=str.lower,
        choices=(*LOG_LEVELS, "warn"),
        metavar="LEVEL",
        help=f"{', '.join(LOG_LEVELS)} (AGGREGATE_LOG_LEVEL)",
    )
    p.set_defaults(run=cmd_ingest)

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
    sys.exit(main())
