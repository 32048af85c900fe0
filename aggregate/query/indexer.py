"""The indexer: keeps the index file equal to the stream, and answers queries from it
(DESIGN §10). Runs on the asyncio island, beside the handler that feeds it.

**Live path.** The change feed (``aggregate.application.changes``) delivers every change
the handler committed; ``deliver`` only appends it to a buffer. The flush loop writes the
buffer in one transaction, off the command path (SQLite in a worker thread): at once when
the last batch is ``batch_interval_s`` old or more, else when it is (or when ``batch_size``
changes are waiting), so under load one batch holds the changes of one interval. Before
it takes the buffer it takes the feed's frontier; once the batch is committed, that
frontier becomes the visible watermark: for every tenant, every message of it at or below
its watermark is in the file.

**Replays.** At start the stream is replayed from where the file left off (``replayed_through``;
0 for a new or deleted file), every tenant at once; until it is done no tenant is current.
With a placement map (some tenants live elsewhere) a tenant is current only once it has been
replayed since the last placement change: the first query after a change replays it from its
watermark (cheap when nothing happened elsewhere), so a tenant that arrives is backfilled
before it is answered. An append of uncertain outcome is resolved by a replay of its tenant.

**Timing.** ``deliver`` notes when each change arrived (one clock read); after each batch
the changes that became visible (their tenant's watermark reached them) are handed to the
``observer`` as ages in seconds, with the batch's size and write time: the index's own
ack -> visible lag, without a query in the way.

**Queries.** ``query`` waits (within its deadline) for the tenant to be current and for
``min_position``, then runs the planned page in a worker thread. The answer's position is
the tenant's watermark before the page was read: everything at or below it is reflected.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.to_thread

from aggregate.application.changes import Frontier
from aggregate.domain.errors import AggregateError, BackendUnavailableError
from aggregate.query.index_store import ViewRow
from aggregate.query.plan import QueryLimits, plan_query
from aggregate.query.replay import Replayer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anyio.abc import TaskStatus

    from aggregate.application.changes import ChangeFeed
    from aggregate.application.handler import TypeLookup
    from aggregate.application.ports import EventStore, StreamReader
    from aggregate.domain.changes import CommittedChange
    from aggregate.domain.ids import AggregateKey
    from aggregate.query.index_store import IndexStore
    from aggregate.query.plan import QueryRequest, Row

log = logging.getLogger(__name__)

MAX_UNSEEN = 100_000
"""Changes written but not yet visible that the indexer keeps timing; beyond it (a tenant
held for long by an uncertain append) the oldest are no longer timed."""


class IndexObserver(Protocol):
    """Where the indexer reports its batches (the service's metrics)."""

    def index_batch(self, lags_s: Sequence[float], size: int, write_s: float) -> None:
        """A batch of ``size`` changes was written in ``write_s``; ``lags_s``: for each
        change that became visible with it, seconds from its delivery. Must not raise."""
        ...


@dataclass(frozen=True, slots=True)
class IndexSettings:
    """Tuning of the indexer; the service builds it from ``Settings``."""

    batch_size: int = 500
    batch_interval_s: float = 0.005
    replay_page: int = 1000
    max_wait_s: float = 5.0
    query_threads: int = 4
    retry_s: float = 1.0
    limits: QueryLimits = field(default_factory=QueryLimits)


@dataclass(frozen=True, slots=True)
class QueryAnswer:
    rows: list[Row]
    next_page_token: str
    position: int


class Indexer:
    """The index of one node: ``deliver`` (the feed's consumer), ``serve``, ``query``."""

    def __init__(
        self,
        *,
        store: IndexStore,
        feed: ChangeFeed,
        reader: StreamReader,
        events: EventStore,
        types: TypeLookup,
        token_key: bytes,
        settings: IndexSettings | None = None,
        hosts_every_tenant: bool = True,
    ) -> None:
        self.store = store
        self.feed = feed
        self.settings = settings or IndexSettings()
        self.token_key = token_key
        self._writes = anyio.CapacityLimiter(1)
        self._reads = anyio.CapacityLimiter(self.settings.query_threads)
        self.replayer = Replayer(
            store=store,
            reader=reader,
            events=events,
            types=types,
            limiter=self._writes,
            page_size=self.settings.replay_page,
        )
        self.reader = reader
        self._buffer: list[CommittedChange] = []
        self._delivered: list[float] = []
        self._unseen: list[tuple[str, int, float]] = []  # written, not visible yet
        self.observer: IndexObserver | None = None
        self._first_buffered = 0.0
        self._wake = anyio.Event()
        self._changed = anyio.Event()
        self.visible = Frontier(0, {})
        self.started = False
        self.hosts_every_tenant = hosts_every_tenant
        self._epoch = 0
        self._all_current_epoch: int | None = None
        self._current: dict[str, int] = {}  # tenant -> epoch it was replayed in
        self._replayed_to: dict[str, int] = {}
        self._replays: dict[str, anyio.Event] = {}
        self._persisted: dict[str, int] = {}
        self._start_end = 0
        self.rows_written = 0
        self.batches = 0
        self._task_group: anyio.abc.TaskGroup | None = None

    # --- the feed's consumer (island thread; never blocks) ---

    def deliver(self, change: CommittedChange) -> None:
        now = time.monotonic()
        if not self._buffer:
            self._first_buffered = now
        self._buffer.append(change)
        self._delivered.append(now)
        self._wake.set()

    # --- lifecycle ---

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the flush loop and the start-up replay (in the background: the service
        serves commands meanwhile, queries wait). Runs until cancelled; then writes what is
        buffered (shielded, bounded by ``max_wait_s``)."""
        self._persisted = await anyio.to_thread.run_sync(self.store.watermarks)
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            tg.start_soon(self._start_replay)
            task_status.started()
            try:
                await self._flush_loop()
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(self.settings.max_wait_s):
                    await self._flush()

    async def _start_replay(self) -> None:
        epoch = self._epoch  # a tenant that arrives meanwhile is replayed on its own
        while True:
            try:
                after = await anyio.to_thread.run_sync(self.store.replayed_through)
                end = await self.reader.stream_end()
                await self.replayer.replay(None, after=after, end=end, replayed_through=True)
            except (AggregateError, OSError) as exc:
                log.warning("index start-up replay failed (%s); retrying", exc)
                await anyio.sleep(self.settings.retry_s)
                continue
            self.feed.observed(end)
            self._start_end = end
            self._all_current_epoch = epoch
            self.started = True
            await self._flush()
            return

    async def _flush_loop(self) -> None:
        interval = self.settings.batch_interval_s
        last = -interval
        while True:
            with anyio.move_on_after(self.settings.retry_s):  # uncertain appends: recheck
                await self._wake.wait()
            self._wake = anyio.Event()
            # At most one batch per interval: after a quiet moment a change is written at
            # once; under load the changes of one interval are written together.
            remaining = last + interval - time.monotonic()
            if remaining > 0 and len(self._buffer) < self.settings.batch_size:
                await anyio.sleep(remaining)
            last = time.monotonic()
            await self._flush()
            for tenant_id in self.feed.uncertain_tenants():
                self._start_tenant_replay(tenant_id)

    async def _flush(self) -> None:
        """Write the buffer with the frontier taken just before it (see the module)."""
        frontier = self.feed.frontier()
        batch, self._buffer = self._buffer, []
        delivered, self._delivered = self._delivered, []
        newest: dict[AggregateKey, CommittedChange] = {}
        for change in batch:
            kept = newest.get(change.key)
            if kept is None or change.position > kept.position:
                newest[change.key] = change
        rows = [
            ViewRow(c.key, c.version, c.position, c.updated_at, c.state) for c in newest.values()
        ]
        watermarks = {
            tenant: frontier.watermark(tenant)
            for tenant in {c.key.tenant_id for c in batch}
            if self.is_current(tenant)
        }
        through = None
        if self.hosts_every_tenant and self.started and not frontier.held:
            through = frontier.known
        self._persisted.update(watermarks)
        write_s = 0.0
        if rows or watermarks or through is not None:
            started = time.monotonic()
            self.rows_written += await anyio.to_thread.run_sync(
                lambda: self.store.write(rows, watermarks, replayed_through=through),
                limiter=self._writes,
            )
            write_s = time.monotonic() - started
            self.batches += 1
        self.visible = frontier
        self._notify()
        if self.observer is not None:
            self._observe(batch, delivered, write_s)

    def _observe(
        self, batch: list[CommittedChange], delivered: list[float], write_s: float
    ) -> None:
        """Time the changes that are visible now (this batch's and earlier held ones)."""
        now = time.monotonic()
        unseen = self._unseen
        unseen.extend(
            (c.key.tenant_id, c.position, at) for c, at in zip(batch, delivered, strict=True)
        )
        lags: list[float] = []
        held: list[tuple[str, int, float]] = []
        for entry in unseen:
            tenant_id, position, at = entry
            if not self.is_current(tenant_id):
                continue  # replayed later: not a live change's lag
            if self.position(tenant_id) >= position:
                lags.append(now - at)
            else:
                held.append(entry)
        self._unseen = held[-MAX_UNSEEN:]
        if lags or batch:
            assert self.observer is not None
            try:
                self.observer.index_batch(lags, len(batch), write_s)
            except Exception:  # metrics must not stop the index
                log.exception("index observer failed")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # --- placement ---

    def placement_changed(self, *, hosts_every_tenant: bool) -> None:
        """The node's placement changed: every tenant must be replayed before it is
        current again (it may have been written elsewhere)."""
        self.hosts_every_tenant = hosts_every_tenant
        self._epoch += 1
        self._notify()

    def is_current(self, tenant_id: str) -> bool:
        return self._all_current_epoch == self._epoch or self._current.get(tenant_id) == self._epoch

    def position(self, tenant_id: str) -> int:
        """The tenant's visible watermark (meaningful when it is current)."""
        return max(
            self.visible.watermark(tenant_id), self._replayed_to.get(tenant_id, 0), self._start_end
        )

    def _start_tenant_replay(self, tenant_id: str) -> anyio.Event:
        running = self._replays.get(tenant_id)
        if running is not None:
            return running
        done = self._replays[tenant_id] = anyio.Event()
        assert self._task_group is not None
        self._task_group.start_soon(self._tenant_replay, tenant_id, done)
        return done

    async def _tenant_replay(self, tenant_id: str, done: anyio.Event) -> None:
        epoch = self._epoch
        try:
            if self.is_current(tenant_id):  # an uncertain append: from its floor
                after = self.feed.watermark(tenant_id)
            else:  # arrived (or placement changed): from where the file has it complete
                after = max(self._persisted.get(tenant_id, 0), self._start_end)
            mark = self.feed.replay_mark()
            end = await self.reader.stream_end()
            await self.replayer.replay(tenant_id, after=after, end=end)
            self.feed.replayed(tenant_id, mark, end)
            self._persisted[tenant_id] = max(self._persisted.get(tenant_id, 0), end)
            self._replayed_to[tenant_id] = max(self._replayed_to.get(tenant_id, 0), end)
            if self._epoch == epoch:
                self._current[tenant_id] = epoch
        except (AggregateError, OSError) as exc:
            log.warning("index replay of tenant %r failed: %s", tenant_id, exc)
            await anyio.sleep(self.settings.retry_s)
        finally:
            del self._replays[tenant_id]
            done.set()
            self._notify()

    # --- queries ---

    async def query(
        self, request: QueryRequest, *, min_position: int, timeout_s: float
    ) -> QueryAnswer:
        """One page for ``request`` once the tenant is current and at ``min_position``.

        Raises:
            InvalidArgumentError: from the planner (filter, order, page size, token).
            BackendUnavailableError: the tenant's index is still being rebuilt after
                ``timeout_s``.
            TimeoutError: ``min_position`` was not reached within ``timeout_s``.
            ResourceExhaustedError: the query needs too much SQLite work.
        """
        plan = plan_query(request, limits=self.settings.limits, token_key=self.token_key)
        tenant_id = request.tenant_id
        timeout_s = min(timeout_s, self.settings.max_wait_s)
        with anyio.move_on_after(timeout_s):
            while not self.is_current(tenant_id):
                changed = self._changed
                if self.started:
                    self._start_tenant_replay(tenant_id)
                await changed.wait()
            while self.position(tenant_id) < min_position:
                await self._changed.wait()
        if not self.is_current(tenant_id):
            raise BackendUnavailableError(
                f"the index of tenant {tenant_id!r} is being rebuilt from the stream "
                f"({self._progress()}); retry shortly"
            )
        position = self.position(tenant_id)
        if position < min_position:
            raise TimeoutError(
                f"the index of tenant {tenant_id!r} is at position {position}, not yet at "
                f"min_position {min_position}, after {timeout_s:g} s; retry, or query "
                "without min_position"
            )
        rows = await anyio.to_thread.run_sync(
            lambda: self.store.run(plan, max_steps=self.settings.limits.max_sqlite_steps),
            limiter=self._reads,
        )
        page, token = plan.page(rows)
        return QueryAnswer(page, token, position)

    def _progress(self) -> str:
        return f"{self.replayer.total_messages} messages replayed"

    def status(self) -> dict[str, Any]:
        """For /health and metrics (read from any thread: plain values only): the visible
        position, how far behind the acknowledged changes it is, whether the start-up
        replay is done, the tenants being replayed and the messages replayed so far."""
        visible = self.visible.known
        buffered = self._first_buffered if self._buffer else None
        return {
            "position": visible,
            "lag_positions": max(0, self.feed.known - visible),
            "lag_seconds": round(time.monotonic() - buffered, 3) if buffered is not None else 0.0,
            "replayed": self.started,
            "replaying_tenants": len(self._replays),
            "replayed_messages": self.replayer.total_messages,
        }
