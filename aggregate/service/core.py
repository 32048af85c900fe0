"""The island side of the service: everything on the command path.

``IslandCore.run`` runs on the asyncio island for the service's whole life. In order it
connects to NATS, ensures the event stream, starts the program workers and compiles every
program, starts the placement watcher and waits until the gate is caught up, builds the
command handler, binds the gRPC server, and reports a ``CoreInfo`` to Trio. It then serves
until ``stop`` and unwinds in reverse order: NATS is drained last. The gRPC drain is a
separate step (``drain_commands``) so the Trio side can order it before the snapshot flush.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import nats.errors

from aggregate.adapters.grpc.server import CommandServer
from aggregate.adapters.grpc.service import GrpcOptions
from aggregate.adapters.grpc.watch_service import WatchServer
from aggregate.adapters.jetstream import JetStreamEventStore, StreamPolicy, ensure_stream
from aggregate.adapters.jetstream.change_reader import StreamChangeReader
from aggregate.adapters.jetstream.connect import open_connection
from aggregate.adapters.jetstream.stream_reader import JetStreamStreamReader
from aggregate.adapters.placement_kv import PlacementWatcher
from aggregate.adapters.quota_kv import QuotaWatcher
from aggregate.adapters.shard_directory import ShardDirectory
from aggregate.application.activity import ActivityTracker
from aggregate.application.changes import ChangeFeed
from aggregate.application.gate import TenantGate
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.application.placement import PlacementController
from aggregate.application.protected import BreakerEventStore
from aggregate.config import manifest_from_settings
from aggregate.config.values import redact_url_credentials
from aggregate.domain.placement import PlacementDecision
from aggregate.ingest.wiring import build_ingestor
from aggregate.programs.base import ProgramLimits
from aggregate.programs.reload import ProgramCatalog
from aggregate.service.index import hosts_every_tenant, open_indexer, query_limits
from aggregate.service.protection import build_protection
from aggregate.service.shards import advertised_entry
from aggregate.watch.hub import WatchHub, WatchLimits
from aggregate.watch.sink import TeeSink

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskGroup, TaskStatus
    from nats.aio.client import Client
    from opentelemetry.trace import Tracer

    from aggregate.adapters.metrics import Metrics
    from aggregate.adapters.protection_metrics import ProtectionMetrics
    from aggregate.application.placement import PlacementChange
    from aggregate.application.ports import SnapshotSink, SnapshotStore
    from aggregate.application.quota import Protection
    from aggregate.config import Settings
    from aggregate.domain.quota import QuotaOverrides
    from aggregate.ingest.runner import Ingestor
    from aggregate.programs.registry import ProgramRegistry
    from aggregate.programs.reload import ReloadOutcome
    from aggregate.query.indexer import Indexer
    from aggregate.service.protection import Breakers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoreInfo:
    """What the island reports once it serves: the gRPC address and the types served."""

    grpc_host: str
    grpc_port: int
    nats_url: str
    aggregate_types: tuple[str, ...]


def program_limits(settings: Settings) -> ProgramLimits:
    return ProgramLimits(
        soft_timeout_seconds=settings.program_timeout_seconds,
        hard_timeout_seconds=settings.program_hard_timeout_seconds,
        max_memory_bytes=settings.program_max_memory_bytes,
        pool_size=settings.program_workers,
        max_batch_calls=settings.program_batch_calls,
    )


def watch_limits(settings: Settings) -> WatchLimits:
    return WatchLimits(
        queue_changes=settings.watch_queue_changes,
        queue_bytes=settings.watch_queue_bytes,
        buffer_changes=settings.watch_buffer_changes,
        buffer_bytes=settings.watch_buffer_bytes,
        max_watchers=settings.max_watchers,
    )


def handler_settings(settings: Settings) -> HandlerSettings:
    return HandlerSettings(
        max_retries=settings.max_retries,
        snapshot_threshold=settings.snapshot_threshold,
        history_limit=settings.command_history,
        cache_size=settings.cache_size,
        retry_backoff_s=settings.retry_backoff_seconds,
        retry_backoff_max_s=settings.retry_backoff_max_seconds,
    )


class IslandCore:
    """Owns the island's resources; every method runs on the island loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        nats_url: str,
        snapshots: SnapshotStore,
        snapshot_sink: SnapshotSink,
        metrics: Metrics,
        breakers: Breakers,
        protection_metrics: ProtectionMetrics,
        tracer: Tracer | None = None,
        serve_grpc: bool = True,
    ) -> None:
        self.settings = settings
        self.breakers = breakers
        self.protection_metrics = protection_metrics
        self.protection: Protection | None = None
        self.quota_watcher: QuotaWatcher | None = None
        self.serve_grpc = serve_grpc
        self.ingestor: Ingestor | None = None
        self.tracer = tracer
        self.nats_url = nats_url
        self.snapshots = snapshots
        self.snapshot_sink = snapshot_sink
        self.metrics = metrics
        self.connected = False
        self.serving = False
        self.nc: Client | None = None
        self.gate: TenantGate | None = None
        self.controller: PlacementController | None = None
        self.handler: CommandHandler | None = None
        self.server: CommandServer | None = None
        self.registry: ProgramRegistry | None = None
        self.programs: ProgramCatalog | None = None
        self.watcher: PlacementWatcher | None = None
        self.activity = ActivityTracker()
        """Per-tenant command counts and last activity (the admin views)."""
        self.directory: ShardDirectory | None = None
        self._grpc_bound: tuple[str, int] | None = None
        self._tasks: TaskGroup | None = None
        self.watch_hub = WatchHub(watch_limits(settings))
        """The change feed of ``WatchAggregates``, fed by the command path."""
        self._stop: anyio.Event | None = None
        self._closing = False
        self.changes = ChangeFeed()
        """The index's change feed (``aggregate.application.changes``): the handler reports
        its appends to it and to the watch hub (one ``TeeSink``); the indexer consumes it."""
        self.indexer: Indexer | None = None

    # ---- lifecycle --------------------------------------------------------------
    async def run(self, report: Callable[[CoreInfo], None]) -> None:
        """Start everything, ``report`` once serving, run until ``stop``, then unwind.

        Raises:
            BackendUnavailableError: NATS cannot be reached within the connect timeout.
            ConfigError, StreamPolicyError, ProgramCompileError: bad configuration.
        """
        self._stop = anyio.Event()
        settings = self.settings
        manifest_from_settings(settings)  # a configuration error stops start-up before NATS
        async with contextlib.AsyncExitStack() as stack:
            nc = await self._connect()
            stack.push_async_callback(self._drain_nats, nc)
            await ensure_stream(
                nc.jetstream(timeout=settings.nats_timeout_seconds),
                StreamPolicy(
                    name=settings.stream_name,
                    replicas=settings.stream_replicas,
                    duplicate_window_s=settings.duplicate_window_ms / 1000,
                ),
                timeout_s=settings.nats_connect_timeout_seconds,
            )
            inner_store = JetStreamEventStore(
                nc, stream=settings.stream_name, request_timeout_s=settings.nats_timeout_seconds
            )
            stack.push_async_callback(inner_store.aclose)
            store = BreakerEventStore(inner_store, self.breakers.event_store)
            self.protection = build_protection(settings, self.breakers, self.protection_metrics)
            self.quota_watcher = QuotaWatcher(
                nc,
                bucket=settings.placement_bucket,
                key=settings.quota_key,
                request_timeout=settings.nats_timeout_seconds,
                replicas=settings.stream_replicas,
            )

            # Every Starlark program is compiled in a worker first (inline ones too: a
            # hostile text must not exhaust this process while compiling).
            self.programs = await stack.enter_async_context(
                ProgramCatalog(partial(manifest_from_settings, settings), program_limits(settings))
            )
            self.registry = self.programs.registry

            self.gate = TenantGate(PlacementDecision(shard_id=settings.shard_id))
            self.controller = PlacementController(
                self.gate, drain_timeout=settings.drain_timeout_seconds, on_change=self._changed
            )
            self.watcher = PlacementWatcher(
                nc,
                bucket=settings.placement_bucket,
                key=settings.placement_key,
                request_timeout=settings.nats_timeout_seconds,
                replicas=settings.stream_replicas,
            )
            reader = StreamChangeReader(
                nc, settings.stream_name, timeout_s=settings.nats_timeout_seconds
            )
            stack.push_async_callback(reader.aclose)
            # A watch "from now" that ends before it sees a change resumes after this.
            stream = JetStreamStreamReader(
                nc, stream=settings.stream_name, request_timeout_s=settings.nats_timeout_seconds
            )
            try:
                self.watch_hub.start_after(await stream.stream_end())
            finally:
                await stream.aclose()
            self.handler = CommandHandler(
                store=store,
                types=self.registry,
                snapshots=self.snapshots,
                snapshot_sink=self.snapshot_sink,
                change_sink=TeeSink(self.changes, self.watch_hub),
                gate=self.gate,
                protection=self.protection,
                settings=handler_settings(settings),
                observer=self.metrics,
                tracer=self.tracer,
                activity=self.activity,
            )
            handler = self.handler
            self.metrics.set_cache_size_source(lambda: len(handler.cache))
            self.protection_metrics.set_queue_depth_source(lambda: handler.locks.waiting)
            self.protection_metrics.set_load_limit(settings.max_in_flight)
            if settings.index_enabled:
                self.indexer = await open_indexer(
                    stack,
                    settings,
                    nc,
                    store,
                    self.changes,
                    self.registry,
                    self.programs.manifest,
                    self.gate,
                )
                self.metrics.set_index_source(self.indexer.status)
                self.indexer.observer = self.metrics
            self.server = CommandServer(
                self.handler,
                GrpcOptions.from_settings(settings),
                observer=self.metrics,
                tracer=self.tracer,
                queries=self.indexer,
            )
            server = self.server
            self.protection_metrics.set_shed_source(lambda: server.service.shed)
            self.protection_metrics.set_paced_source(lambda: server.pacer.paced)
            if settings.shard_directory:
                self.directory = ShardDirectory(
                    nc,
                    shard_id=settings.shard_id,
                    bucket=settings.shard_directory_bucket,
                    ttl=settings.shard_ttl_seconds,
                    heartbeat=settings.shard_heartbeat_seconds,
                    refresh=settings.shard_refresh_seconds,
                    request_timeout=settings.nats_timeout_seconds,
                    replicas=settings.stream_replicas,
                )
                self.server.service.owner_address = self._owner_address
            if settings.ingest_sources:
                self.ingestor = build_ingestor(settings, handler, self.registry, nc, self.metrics)
            self.server.queries.watches = WatchServer(
                self.server.service, self.watch_hub, reader, query_limits(settings)
            )
            async with anyio.create_task_group() as tg:
                self._tasks = tg
                await tg.start(self.watch_hub.serve)
                if self.indexer is not None:
                    await tg.start(self.indexer.serve)
                await tg.start(self.controller.run, self.watcher.updates())
                await tg.start(self._follow_quotas)
                if self.directory is not None:
                    await tg.start(
                        self.controller.follow_live_shards, self.directory.live_updates()
                    )
                host, port = "", 0
                if self.serve_grpc:  # `aggregate ingest --once` needs the handler only
                    host, port = await self.server.start()
                    self._grpc_bound = (host, port)
                    stack.push_async_callback(self.server.aclose)
                self._publish_readiness()  # NOT_SERVING until the service says it serves
                report(CoreInfo(host, port, self.nats_url, tuple(self.registry.names())))
                await self._stop.wait()
                tg.cancel_scope.cancel()

    async def join_directory(self, http_host: str, http_port: int) -> str | None:
        """Put this node's entry in the shard directory (advertised gRPC and admin HTTP
        addresses) and start its heartbeat; returns the advertised gRPC address (None: the
        directory is off).

        Raises:
            ConfigError: no dialable address can be derived; set the advertise settings.
            nats.errors.Error, TimeoutError: NATS did not answer.
        """
        if self.directory is None or self._tasks is None or self._grpc_bound is None:
            return None
        entry = advertised_entry(self.settings, self._grpc_bound, (http_host, http_port))
        try:
            await self.directory.register(entry)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            log.warning("shard directory entry not written yet (the heartbeat retries): %r", exc)
        self._tasks.start_soon(self.directory.serve_heartbeat)
        log.info(
            "shard %s joined the shard directory %s as gRPC %s, admin HTTP %s",
            entry.shard_id,
            self.directory.bucket,
            entry.grpc_addr,
            entry.http_addr,
        )
        return entry.grpc_addr

    async def leave_directory(self) -> None:
        """Remove this node's entry (clean shutdown): other shards take its ring tenants."""
        if self.directory is not None:
            await self.directory.deregister()

    def _owner_address(self, shard: str) -> str | None:
        directory = self.directory
        entry = directory.entry(shard) if directory is not None else None
        return entry.grpc_addr if entry is not None else None

    def stop(self) -> None:
        """Ask ``run`` to unwind (call on the island)."""
        if self._stop is not None:
            self._stop.set()

    async def drain_commands(self, grace: float) -> bool:
        """Stop taking commands and let those in flight finish within ``grace`` seconds.
        Returns whether every in-flight command finished."""
        if self.server is None:
            return True
        return await self.server.drain(grace)

    def set_serving(self, serving: bool) -> None:
        """Whether the service as a whole serves (started and not draining); gRPC health
        says SERVING only while it does and NATS is connected."""
        self.serving = serving
        self._publish_readiness()

    def _publish_readiness(self) -> None:
        if self.server is not None:
            self.server.readiness.set(self.serving and self.connected)

    # ---- NATS -------------------------------------------------------------------
    async def _connect(self) -> Client:
        settings = self.settings

        async def disconnected() -> None:
            self.connected = False
            self._publish_readiness()
            if self._closing:  # our own drain at shutdown: expected, not a fault
                log.info("NATS connection closed")
            else:
                log.warning("NATS disconnected")

        async def reconnected() -> None:
            self.connected = True
            self._publish_readiness()
            log.info("NATS reconnected")
            if self.watcher is not None:
                self.watcher.notify_reconnected()
            if self.quota_watcher is not None:
                self.quota_watcher.notify_reconnected()

        async def error(exc: Exception) -> None:
            log.warning("NATS error: %r", exc)

        log.info(
            "connecting to NATS at %s (up to %g s, AGGREGATE_NATS_CONNECT_TIMEOUT_MS)",
            redact_url_credentials(self.nats_url),
            settings.nats_connect_timeout_seconds,
        )
        nc = await open_connection(
            self.nats_url.split(","),
            timeout_s=settings.nats_connect_timeout_seconds,
            name=f"aggregate-{settings.shard_id}",
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
            hint="check AGGREGATE_NATS_URL (unset: the service runs its own nats-server)",
        )
        self.nc = nc
        self.connected = True
        return nc

    async def _drain_nats(self, nc: Client) -> None:
        self.connected = False
        self._closing = True
        with anyio.move_on_after(self.settings.nats_timeout_seconds):
            try:
                await nc.drain()
            except (OSError, nats.errors.Error) as exc:
                log.warning("NATS drain failed: %r", exc)
        if not nc.is_closed:
            with contextlib.suppress(OSError, nats.errors.Error):
                await nc.close()

    # ---- quotas ------------------------------------------------------------------
    async def _follow_quotas(self, *, task_status: TaskStatus[None]) -> None:
        """Apply the live quota overrides; ``started`` once the first read is applied."""
        assert self.quota_watcher is not None
        assert self.protection is not None
        started = False
        async for overrides in self.quota_watcher.quota_updates():
            self._apply_quotas(overrides)
            if not started:
                started = True
                task_status.started()

    def _apply_quotas(self, overrides: QuotaOverrides | None) -> None:
        assert self.protection is not None
        self.protection.set_kv_overrides(overrides)
        log.info("quota overrides in force: %d tenants", len(overrides or {}))

    def quota_payload(self, tenant_id: str) -> dict[str, Any] | None:
        """The tenant's quota and usage (None before the core serves)."""
        if self.protection is None:
            return None
        return self.protection.status(tenant_id).as_dict()

    # ---- placement ---------------------------------------------------------------
    def _changed(self, change: PlacementChange) -> None:
        if self.handler is not None:
            for tenant in change.left:
                self.handler.forget_tenant(tenant)
        for tenant in change.left:
            self.watch_hub.forget_tenant(tenant, change.decision.owner_of(tenant))
        if self.indexer is not None:
            self.indexer.placement_changed(hosts_every_tenant=hosts_every_tenant(change.decision))
        log.info("placement changed: %s", change.as_dict())

    def tenant_payload(self) -> Any:
        assert self.gate is not None
        return [status.as_dict() for status in self.gate.tenants()]

    # ---- programs ----------------------------------------------------------------
    async def reload_programs(self, rebuild: bool) -> ReloadOutcome:
        """Reload the programs (``ProgramCatalog.reload``). With ``rebuild``, the cached
        aggregates of the replaced types are dropped at the swap and their snapshots are
        ignored until ``end_rebuild``, so their states are replayed with the new apply.

        Raises:
            ProgramReloadError: refused; nothing changed.
        """
        assert self.programs is not None

        def swapped(outcome: ReloadOutcome) -> None:
            if rebuild and self.handler is not None:
                types = outcome.replaced
                self.handler.ignore_snapshots(types, True)
                dropped = self.handler.cache.discard_types(types)
                log.info("rebuild: dropped %d cached aggregates", dropped)

        return await self.programs.reload(swapped)

    def end_rebuild(self, types: list[str] | None) -> None:
        """The replaced types' snapshots are deleted: load them again."""
        if self.handler is not None:
            self.handler.ignore_snapshots(types, False)

    def program_payload(self) -> list[dict[str, str]]:
        assert self.programs is not None
        return self.programs.describe()
