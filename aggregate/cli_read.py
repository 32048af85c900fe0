"""The read side's verbs of the ``aggregate`` command: ``query`` and ``watch`` (gRPC
clients of ``QueryService``). Exit codes as ``aggregate.cli``."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from aggregate.cli import EXIT_OK, _client_options, _position, _uuid

if TYPE_CHECKING:
    import argparse


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


def add_query_verb(verbs: Any) -> None:
    """The ``query`` verb."""
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
        "--page-size", type=_position, default=0, help="views per page (default: the service's, 50)"
    )
    p.add_argument("--page-token", default="", help="continue from this page token")
    p.add_argument("--all", action="store_true", help="follow the page tokens to the end")
    p.add_argument(
        "--min-position",
        type=_position,
        default=0,
        help="wait until the index holds this position (a command's position: read your write)",
    )
    p.set_defaults(run=cmd_query)


def add_watch_verb(verbs: Any) -> None:
    """The ``watch`` verb."""
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
