"""``aggregate ingest --once``: one ingestion run in a process of its own, then exit.

The process builds what the command path needs (NATS connection, event stream, programs,
placement gate, handler: the island core without its gRPC server), runs the ingestor once
over the configured sources (or one), and stops. Records go through the same handler as
gRPC commands, so de-duplication, placement and limits apply; the ledger and the index keep
a run that is killed half-way from charging anything twice when it is run again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry

from aggregate.adapters.metrics import Metrics
from aggregate.adapters.protection_metrics import ProtectionMetrics
from aggregate.adapters.sqlite_snapshots import SqliteSnapshotStore
from aggregate.bridge import Island
from aggregate.domain.errors import BackendUnavailableError, ConfigError
from aggregate.service.core import CoreInfo, IslandCore
from aggregate.service.protection import build_breakers

if TYPE_CHECKING:
    from aggregate.config import Settings
    from aggregate.domain.aggregate import Snapshot

log = logging.getLogger(__name__)


class _NoSnapshots:
    """A one-shot run writes no snapshots (the serving nodes do)."""

    def offer(self, snapshot: Snapshot) -> None:
        pass


def nats_url_of(settings: Settings) -> str:
    """Where NATS is: the configured URL, or the one the running embedded service wrote.

    Raises:
        BackendUnavailableError: embedded, and no running service wrote its URL.
    """
    if not settings.nats_embedded:
        return settings.nats_url
    url_file = settings.storage_path / "embedded-nats.url"
    if not url_file.exists():
        raise BackendUnavailableError(
            "no embedded NATS URL under the storage path: is `aggregate serve` running with "
            "this storage path? Or pass --nats-url"
        )
    return url_file.read_text().strip()


async def ingest_once(settings: Settings, source: str | None) -> dict[str, Any]:
    """One run; its summary.

    Raises:
        ConfigError: no sources configured, or the ledger type is not served.
        BackendUnavailableError: NATS cannot be reached.
        InvalidArgumentError: ``source`` names no configured source.
    """
    if not settings.ingest_sources:
        raise ConfigError("no ingestion sources are configured (AGGREGATE_INGEST_SOURCES)")
    nats_url = nats_url_of(settings)
    settings.storage_path.mkdir(parents=True, exist_ok=True)
    snapshots = await SqliteSnapshotStore.open(settings.storage_path)
    registry = CollectorRegistry()
    protection_metrics = ProtectionMetrics(registry, tenant_labels=settings.metrics_tenant_labels)
    core = IslandCore(
        settings,
        nats_url=nats_url,
        snapshots=snapshots,
        snapshot_sink=_NoSnapshots(),
        metrics=Metrics(registry, tenant_labels=settings.metrics_tenant_labels),
        breakers=build_breakers(settings, protection_metrics),
        protection_metrics=protection_metrics,
        serve_grpc=False,
    )
    island = Island(event_loop=settings.event_loop)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(island.serve)
            ready = trio.Event()
            done = trio.Event()

            def report(_: CoreInfo) -> None:
                island.to_trio_soon(ready.set)

            async def run_core() -> None:
                try:
                    await island.run(core.run, report)
                finally:
                    done.set()

            nursery.start_soon(run_core)
            async with trio.open_nursery() as waiter:  # the core fails or reports ready
                waiter.start_soon(_set_when, ready, waiter.cancel_scope)
                waiter.start_soon(_set_when, done, waiter.cancel_scope)
            if not ready.is_set():
                await done.wait()
                raise BackendUnavailableError("the service core stopped before it was ready")
            assert core.ingestor is not None
            try:
                summary = await island.run(core.ingestor.run_once, source)
            finally:
                await island.call(core.stop)
                await done.wait()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await snapshots.aclose()
    return summary.as_dict()


async def _set_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def run_ingest_once(settings: Settings, source: str | None) -> dict[str, Any]:
    """``ingest_once`` in a new Trio run; start-up errors unwrapped from their groups."""
    from aggregate.service.main import sole_error

    try:
        return trio.run(ingest_once, settings, source)
    except BaseExceptionGroup as group:
        cause = sole_error(group)
        if cause is None:
            raise
        raise cause from None
