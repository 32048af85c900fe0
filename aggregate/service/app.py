"""The service: one Trio nursery tree, subsystems started in dependency order.

Order: embedded nats-server (when configured) → the asyncio island → the island core (NATS
connection, stream, programs, placement watcher caught up, handler, gRPC bound) →
snapshotter → admin HTTP. Each is nested inside the one it depends on, so leaving a block
stops exactly what it started, in reverse order. Shutdown (``request_shutdown``): readiness
turns false, the gRPC server drains within ``shutdown_timeout``, the admin server stops, the
snapshotter flushes under a shielded deadline, the island unwinds (NATS drained last), and
only then does the embedded nats-server stop.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry

from aggregate.adapters.admin_guard import HttpLimits
from aggregate.adapters.admin_http import AdminServer
from aggregate.adapters.metrics import Metrics
from aggregate.adapters.protection_metrics import ProtectionMetrics
from aggregate.adapters.snapshotter import Snapshotter
from aggregate.adapters.sqlite_snapshots import SqliteSnapshotStore
from aggregate.adapters.storage_probe import StorageProbe
from aggregate.adapters.tracing import open_tracing
from aggregate.application.protected import BreakerSnapshotStore
from aggregate.bridge import Island
from aggregate.ingest.subsystem import IngestSubsystem
from aggregate.service.admin_backend import VERSION, IslandAdminBackend
from aggregate.service.core import CoreInfo, IslandCore
from aggregate.service.embedded import EmbeddedNats
from aggregate.service.protection import build_breakers

if TYPE_CHECKING:
    from aggregate.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceInfo:
    """Where a started service listens."""

    grpc_host: str
    grpc_port: int
    http_host: str
    http_port: int
    nats_url: str
    aggregate_types: tuple[str, ...]


class Service:
    """The whole service; ``run`` is its lifetime."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(
            self.registry, tenant_labels=settings.metrics_tenant_labels, version=VERSION
        )
        self.protection_metrics = ProtectionMetrics(
            self.registry, tenant_labels=settings.metrics_tenant_labels
        )
        self.breakers = build_breakers(settings, self.protection_metrics)
        self.tracing = open_tracing(settings, version=VERSION)
        self.tracer = self.tracing.tracer if self.tracing is not None else None
        self.state = "starting"
        self.started_at = time.monotonic()
        self.island = Island(event_loop=settings.event_loop)
        self.core: IslandCore | None = None
        self.snapshotter: Snapshotter | None = None
        self.snapshots: SqliteSnapshotStore | None = None
        self.embedded: EmbeddedNats | None = None
        self.ingest: IngestSubsystem | None = None
        self.clean_drain = True
        self._shutdown = trio.Event()
        self._core_done = trio.Event()
        # The long start-up steps (embedded nats-server, island core) run in these scopes;
        # a shutdown request before the service serves cancels them, so start-up stops at
        # whatever it was waiting for and unwinds in the usual order.
        self._startup_steps: list[trio.CancelScope] = []
        self.abandoned = False
        self.metrics.set_ready_source(self.ready)
        self.metrics.set_nats_connected_source(
            lambda: self.core is not None and self.core.connected
        )

    def ready(self) -> bool:
        """True only while serving, connected to NATS and no circuit breaker is open (read
        from any thread)."""
        core = self.core
        return (
            self.state == "serving"
            and core is not None
            and core.connected
            and not self.breakers.open_names()
        )

    def request_shutdown(self) -> None:
        """Begin the graceful shutdown (call on the Trio thread). Before the service
        serves, this abandons the start-up at once: what had started is stopped again."""
        if self.state in ("serving", "starting"):
            log.info("shutdown requested")
        self._shutdown.set()
        if self.state == "starting":
            for step in self._startup_steps:
                step.cancel()

    def _startup_step(self) -> trio.CancelScope:
        """The cancel scope of one start-up step (already cancelled after a shutdown
        request)."""
        step = trio.CancelScope()
        if self._shutdown.is_set():
            step.cancel()
        self._startup_steps.append(step)
        return step

    async def run(
        self, *, task_status: trio.TaskStatus[ServiceInfo] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every subsystem, report ``ServiceInfo`` when ready, serve until
        ``request_shutdown``, then shut down in order. A shutdown requested while starting
        stops the start-up where it is (then this returns without reporting).

        Raises:
            ConfigError, BackendUnavailableError, ProgramCompileError: startup failed; what
                had started is stopped again before this returns. They arrive wrapped in
                exception groups (one per nursery they cross).
        """
        await self._run(task_status)
        if self.abandoned:
            log.info("start-up abandoned: shutdown requested before the service served")
        self.state = "stopped"
        log.info("stopped (clean drain: %s)", self.clean_drain)

    async def _run(self, task_status: trio.TaskStatus[ServiceInfo]) -> None:
        settings = self.settings
        async with trio.open_nursery() as outer:
            nats_url = settings.nats_url
            if settings.nats_embedded:
                self.embedded = EmbeddedNats(settings.storage_path)
                with self._startup_step() as step:
                    nats_url = await outer.start(self.embedded.serve)
                if step.cancelled_caught:
                    self.abandoned = True
                    return
                (settings.storage_path / "embedded-nats.url").write_text(nats_url + "\n")
            snapshots = await SqliteSnapshotStore.open(settings.storage_path)
            try:
                await self._run_on_island(nats_url, snapshots, task_status)
            finally:
                with trio.CancelScope(shield=True):
                    await snapshots.aclose()
                    await self._stop_tracing()
                outer.cancel_scope.cancel()

    async def _stop_tracing(self) -> None:
        """Export the last spans, within the export deadline (plus a second of slack)."""
        tracing = self.tracing
        if tracing is None:
            return
        with trio.move_on_after(tracing.timeout_s + 1) as scope:
            await trio.to_thread.run_sync(tracing.shutdown, abandon_on_cancel=True)
        if scope.cancelled_caught:
            log.warning("tracing: the last spans were not exported in time")

    async def _run_on_island(
        self,
        nats_url: str,
        snapshots: SqliteSnapshotStore,
        task_status: trio.TaskStatus[ServiceInfo],
    ) -> None:
        settings = self.settings
        guarded = BreakerSnapshotStore(snapshots, self.breakers.snapshot_store)
        snapshotter = Snapshotter(
            guarded, flush_timeout=settings.snapshot_flush_timeout_seconds, tracer=self.tracer
        )
        self.metrics.set_snapshot_lag_source(lambda: snapshotter.stats.lag_seconds)
        self.metrics.set_snapshots_pending_source(lambda: snapshotter.stats.pending)
        core = IslandCore(
            settings,
            nats_url=nats_url,
            snapshots=guarded,
            snapshot_sink=snapshotter,
            metrics=self.metrics,
            breakers=self.breakers,
            protection_metrics=self.protection_metrics,
            tracer=self.tracer,
        )
        async with trio.open_nursery() as island_nursery:
            island = await island_nursery.start(self.island.serve)
            with self._startup_step() as step:
                info: CoreInfo = await island_nursery.start(self._serve_core, island, core)
            if step.cancelled_caught:  # the core has unwound (NATS closed); stop the island
                self.abandoned = True
                island_nursery.cancel_scope.cancel()
                return
            self.core = core
            self.snapshotter, self.snapshots = snapshotter, snapshots
            async with trio.open_nursery() as snapshot_nursery:
                await snapshot_nursery.start(snapshotter.serve)
                storage = StorageProbe(
                    settings.storage_path,
                    interval_s=settings.storage_check_interval_seconds,
                    timeout_s=settings.storage_check_timeout_seconds,
                )
                await snapshot_nursery.start(storage.serve)
                backend = IslandAdminBackend(
                    self,
                    island,
                    core,
                    snapshots=snapshots,
                    snapshotter=snapshotter,
                    storage=storage,
                )
                if core.ingestor is not None:
                    self.ingest = IngestSubsystem(
                        island, core.ingestor, interval_s=settings.ingest_interval_seconds
                    )
                admin = AdminServer(
                    backend,
                    token=settings.admin_token,
                    host=settings.http_bind[0],
                    port=settings.http_bind[1],
                    metrics=self.metrics,
                    drain_timeout_s=settings.drain_timeout_seconds,
                    limits=HttpLimits(
                        max_body_bytes=settings.http_max_body_bytes,
                        max_header_bytes=settings.http_max_header_bytes,
                        max_headers=settings.http_max_headers,
                        body_timeout_s=settings.http_body_timeout_seconds,
                    ),
                    programs=backend,
                    move_timeout_s=settings.move_timeout_seconds,
                    ingest=self.ingest,
                )
                async with trio.open_nursery() as admin_nursery:
                    http_host, http_port = await admin_nursery.start(admin.serve)
                    self.state = "serving"
                    # What starting made (modules, compiled programs, clients, protobuf
                    # descriptors) lives as long as the process: out of the cyclic
                    # collector's reach, its full collections walk only what serving makes
                    # (they paused the command path 30-120 ms on the benchmark machine).
                    gc.freeze()
                    log.info("froze %d startup objects out of the cyclic GC", gc.get_freeze_count())
                    await island.run(core.join_directory, http_host, http_port)
                    await island.call(core.set_serving, True)
                    if self.ingest is not None:  # periodic runs, once the node serves
                        await admin_nursery.start(self.ingest.serve)
                    log.info(
                        "serving gRPC on %s:%d, admin HTTP on %s:%d, NATS %s, types %s",
                        info.grpc_host,
                        info.grpc_port,
                        http_host,
                        http_port,
                        nats_url,
                        ", ".join(info.aggregate_types),
                    )
                    task_status.started(
                        ServiceInfo(
                            info.grpc_host,
                            info.grpc_port,
                            http_host,
                            http_port,
                            nats_url,
                            info.aggregate_types,
                        )
                    )
                    await self._shutdown.wait()
                    self.state = "draining"
                    await island.call(core.set_serving, False)
                    await island.run(core.leave_directory)
                    grace = settings.shutdown_timeout_seconds
                    with trio.move_on_after(grace + 5) as scope:
                        self.clean_drain = await island.run(core.drain_commands, grace)
                    if scope.cancelled_caught:
                        self.clean_drain = False
                    log.info("gRPC drained (all in-flight commands finished: %s)", self.clean_drain)
                    self.state = "stopping"
                    admin_nursery.cancel_scope.cancel()
                snapshot_nursery.cancel_scope.cancel()  # the snapshotter flushes, shielded
            await island.call(core.stop)
            # _serve_core returns once the core has unwound (NATS drained); then the
            # island itself stops.
            await self._core_done.wait()
            island_nursery.cancel_scope.cancel()

    async def _serve_core(
        self,
        island: Island,
        core: IslandCore,
        *,
        task_status: trio.TaskStatus[CoreInfo] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await island.run(core.run, lambda info: island.to_trio_soon(task_status.started, info))
        finally:
            self._core_done.set()
