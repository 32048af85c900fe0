"""The ``aggregate ingest`` verb: one run of usage ingestion over the configured sources.
Exit codes as ``aggregate.cli``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aggregate.cli import (
    EXIT_OK,
    EXIT_REFUSED,
    UsageError,
    _config_options,
    _log_level_option,
    _manifest_option,
    _print,
    _settings,
)
from aggregate.domain.errors import InvalidArgumentError

if TYPE_CHECKING:
    import argparse


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


def add_ingest_verb(verbs: Any) -> None:
    """The ``ingest`` verb."""
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
    _log_level_option(p)
    p.set_defaults(run=cmd_ingest)
