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
from aggregate.application.activity import ActivityTracker
from aggregate.application.changes import ChangeFeed
from aggregate.application.gate import TenantGate
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.application.placement import PlacementController
from aggregate.config import manifest_from_settings
from aggregate.config.values import redact_url_credentials
from aggregate.domain.manifest import Isolation, Language
from aggregate.domain.placement import PlacementDecision
from aggregate.programs.base import ProgramLimits
from aggregate.programs.pool import WorkerPool
from aggregate.programs.registry import ProgramRegistry, check_manifest, isolation_warnings
from aggregate.service.index import hosts_every_tenant, open_indexer
from aggregate.watch.hub import WatchHub, WatchLimits
from aggregate.watch.sink import TeeSink

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client
    from opentelemetry.trace import Tracer

    from aggregate.adapters.metrics import Metrics
    from aggregate.application.placement import PlacementChange
    from aggregate.application.ports import SnapshotSink, SnapshotStore
    from aggregate.config import Settings
    from aggregate.query.indexer import Indexer

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
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings
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
        self.watcher: PlacementWatcher | None = None
        self.activity = ActivityTracker()
        """Per-tenant command counts and last activity (the admin views)."""
        self.watch_hub = WatchHub(watch_limits(settings))
        """The change feed of ``WatchAggregates``, fed by the command path."""
        self._stop: anyio.Event | None = None
        self._closing = False
        self.changes = ChangeFeed()
        self.indexer: Indexer | None = None
        """The read side's change feed (``aggregate.application.changes``): the handler
        reports its appends to it; readers (index, watch) add themselves to its consumers."""

    # ---- lifecycle --------------------------------------------------------------
    async def run(self, report: Callable[[CoreInfo], None]) -> None:
        """Start everything, ``report`` once serving, run until ``stop``, then unwind.

        Raises:
            BackendUnavailableError: NATS cannot be reached within the connect timeout.
            ConfigError, StreamPolicyError, ProgramCompileError: bad configuration.
        """
        self._stop = anyio.Event()
        settings = self.settings
        manifest = manifest_from_settings(settings)
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
            store = JetStreamEventStore(
                nc, stream=settings.stream_name, request_timeout_s=settings.nats_timeout_seconds
            )
            stack.push_async_callback(store.aclose)

            limits = program_limits(settings)
            pool = None
            if any(
                t.language is Language.STARLARK and t.isolation is Isolation.PROCESS
                for t in manifest.types.values()
            ):
                pool = await stack.enter_async_context(WorkerPool(limits))
            for warning in isolation_warnings(manifest):
                log.warning("%s", warning)
            # Every Starlark program is compiled in a worker first (inline ones too: a
            # hostile text must not exhaust this process while compiling).
            specs = await check_manifest(manifest, limits=limits, pool=pool)
            self.registry = ProgramRegistry(specs)

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
                settings=handler_settings(settings),
                observer=self.metrics,
                tracer=self.tracer,
                activity=self.activity,
            )
            handler = self.handler
            self.metrics.set_cache_size_source(lambda: len(handler.cache))
            if settings.index_enabled:
                self.indexer = await open_indexer(
                    stack, settings, nc, store, self.changes, self.registry, manifest, self.gate
                )
                self.metrics.set_index_source(self.indexer.status)
            self.server = CommandServer(
                self.handler,
                GrpcOptions.from_settings(settings),
                observer=self.metrics,
                tracer=self.tracer,
                queries=self.indexer,
            )
            self.server.queries.watches = WatchServer(self.server.service, self.watch_hub, reader)
            async with anyio.create_task_group() as tg:
                await tg.start(self.watch_hub.serve)
                if self.indexer is not None:
                    await tg.start(self.indexer.serve)
                await tg.start(self.controller.run, self.watcher.updates())
                host, port = await self.server.start()
                stack.push_async_callback(self.server.aclose)
                self._publish_readiness()  # NOT_SERVING until the service says it serves
                report(CoreInfo(host, port, self.nats_url, tuple(self.registry.names())))
                await self._stop.wait()
                tg.cancel_scope.cancel()

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
