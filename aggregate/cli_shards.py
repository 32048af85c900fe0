"""The shards' verbs of the ``aggregate`` command: ``shards``, ``route`` (read NATS KV
directly) and ``tenant move`` (a running node's admin API). Exit codes as ``aggregate.cli``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregate.cli import EXIT_OK, EXIT_REFUSED, _config_options, _nats_url, _print, _settings

if TYPE_CHECKING:
    import argparse


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


def add_shard_verbs(verbs: Any) -> None:
    """The ``shards``, ``route`` and ``tenant move`` verbs."""
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
