"""The snapshotter: writes snapshots off the command path (DESIGN §3, §5).

The handler (on the asyncio island thread) hands it aggregates due for a snapshot through
``offer``, which never blocks: it keeps the newest pending snapshot per aggregate in a
lock-protected dict and wakes the Trio task with ``TrioToken.run_sync_soon``. The Trio
task writes them through the ``SnapshotStore``. Snapshots are only an optimisation, so the
pending set is bounded (the oldest is dropped when full) and a failed write is logged and
counted, never fatal. When ``serve`` is cancelled it flushes what is pending under a
shielded scope with its own deadline, then reports how many were written and left.

With a tracer (tracing on), ``offer`` keeps the caller's trace context (the command's, on
the island thread) with the snapshot, and each write is a ``snapshot write`` span under it:
context variables do not cross threads, so the parent travels with the offer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from opentelemetry import context as otel_context

from aggregate.domain.errors import AggregateError

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

    from opentelemetry.context import Context
    from opentelemetry.trace import Tracer

    # trio-typing's stubs (a dev dependency) shadow trio's own types and lack
    # trio.TaskStatus; with them gone this becomes ``trio.TaskStatus``.
    from trio import TaskStatus

    from aggregate.application.ports import SnapshotStore
    from aggregate.domain.aggregate import Snapshot
    from aggregate.domain.ids import AggregateKey

logger = logging.getLogger(__name__)

_Pending = tuple["Snapshot", float, "Context | None"]
"""A snapshot waiting, when it was first offered, and the trace context of its offer."""


@dataclass(frozen=True, slots=True)
class SnapshotterStats:
    """Counters for metrics. ``lag_seconds`` is how long the oldest snapshot not yet
    written (pending or being written) has waited; 0 when there is none."""

    pending: int
    offered: int
    written: int
    superseded: int
    failed: int
    dropped: int
    lag_seconds: float


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What a flush did: snapshots written, snapshots left pending, deadline hit."""

    written: int
    left: int
    timed_out: bool


class Snapshotter:
    """Trio subsystem implementing ``SnapshotSink`` (see the module docstring).

    Args:
        store: where snapshots are written (only ``save`` is used).
        max_pending: at most this many aggregates wait; a new one beyond it drops the
            oldest waiting one (counted in ``dropped``).
        flush_timeout: seconds the shutdown flush may take.
        clock: monotonic seconds, for ``lag_seconds``.
        tracer: when given, every write is a span (see the module docstring).
    """

    def __init__(
        self,
        store: SnapshotStore,
        *,
        max_pending: int = 10_000,
        flush_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        tracer: Tracer | None = None,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending}")
        self._store = store
        self._max_pending = max_pending
        self.flush_timeout = flush_timeout
        self._clock = clock
        self._tracer = tracer
        self._lock = threading.Lock()
        # key -> (snapshot, when first offered, trace context of the offer); insertion order
        # is waiting order
        self._pending: OrderedDict[AggregateKey, _Pending] = OrderedDict()
        self._in_flight: dict[AggregateKey, float] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._wakeup = trio.Event()
        self._wake_scheduled = False
        self._write_done = trio.Event()
        self.last_flush: FlushResult | None = None
        """What the shutdown flush of the last ``serve`` did."""
        self._offered = self._written = self._superseded = self._failed = self._dropped = 0

    def offer(self, snapshot: Snapshot) -> None:
        """Take ``snapshot`` to write later; a pending snapshot of the same aggregate with
        an equal or newer version is kept instead. Never blocks; callable from any thread,
        including the Trio thread, and before ``serve`` starts (it is then written once
        ``serve`` runs)."""
        parent = otel_context.get_current() if self._tracer is not None else None
        with self._lock:
            self._offered += 1
            self._merge(snapshot, self._clock(), parent)
            if self._wake_scheduled or self._token is None:
                return
            self._wake_scheduled = True
            token = self._token
        try:
            token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            with self._lock:
                self._wake_scheduled = False

    def _merge(self, snapshot: Snapshot, offered_at: float, parent: Context | None) -> None:
        """Add under the lock, newer version wins; keeps the first offer's waiting time."""
        current = self._pending.get(snapshot.key)
        if current is not None:
            if current[0].version < snapshot.version:
                self._pending[snapshot.key] = (snapshot, current[1], parent)
            return
        self._pending[snapshot.key] = (snapshot, offered_at, parent)
        while len(self._pending) > self._max_pending:
            dropped, _ = self._pending.popitem(last=False)
            self._dropped += 1
            logger.debug("snapshot of %s dropped: %d pending", dropped, self._max_pending)

    def _wake(self) -> None:
        # Runs in the Trio thread (run_sync_soon).
        with self._lock:
            self._wake_scheduled = False
        self._wakeup.set()

    @property
    def stats(self) -> SnapshotterStats:
        """A consistent copy of the counters; safe from any thread."""
        with self._lock:
            waiting = [item[1] for item in self._pending.values()] + list(self._in_flight.values())
            lag = max(0.0, self._clock() - min(waiting)) if waiting else 0.0
            return SnapshotterStats(
                pending=len(self._pending),
                offered=self._offered,
                written=self._written,
                superseded=self._superseded,
                failed=self._failed,
                dropped=self._dropped,
                lag_seconds=lag,
            )

    async def serve(
        self, *, task_status: TaskStatus[Snapshotter] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Write offered snapshots until cancelled, then flush (see ``flush``).

        Reports itself through ``task_status`` once offers wake it.

        Cancellation: the normal way to stop. The snapshot being written when cancelled
        goes back to the pending set (the store's monotonic write makes writing it again
        harmless), then pending snapshots are flushed under a shielded scope bounded by
        ``flush_timeout``, and ``serve`` returns by re-raising the cancellation.
        """
        with self._lock:
            if self._token is not None:
                raise RuntimeError("Snapshotter.serve is already running")
            self._token = trio.lowlevel.current_trio_token()
            self._wakeup = trio.Event()
            self._wake_scheduled = False
            if self._pending:
                self._wakeup.set()
        try:
            task_status.started(self)
            while True:
                await self._wakeup.wait()
                # Reset before taking work: an offer after this point sets the new event.
                self._wakeup = trio.Event()
                await self._write_pending()
        finally:
            with trio.CancelScope(shield=True):
                result = await self.flush()
            self.last_flush = result
            with self._lock:
                self._token = None
            log = logger.warning if result.left or result.timed_out else logger.info
            log(
                "snapshotter stopped: %d snapshots written at shutdown, %d left%s",
                result.written,
                result.left,
                " (flush timed out)" if result.timed_out else "",
            )

    async def flush(self) -> FlushResult:
        """Write everything pending now, for at most ``flush_timeout`` seconds.

        Cancellation: stops early, like the deadline; the snapshot being written goes back
        to the pending set.
        """
        before = self._written
        with trio.move_on_after(self.flush_timeout) as scope:
            await self._write_pending()
        with self._lock:
            left = len(self._pending)
        return FlushResult(self._written - before, left, scope.cancelled_caught)

    async def discard_types(self, aggregate_types: list[str] | None) -> int:
        """Drop the pending snapshots of the given types (None: every type) and wait until
        none of theirs is being written (a rebuild deletes their stored snapshots next).
        Returns how many were dropped. Call on the Trio thread.

        Cancellation: stops waiting; what was dropped stays dropped.
        """

        def matches(key: AggregateKey) -> bool:
            return aggregate_types is None or key.aggregate_type in aggregate_types

        with self._lock:
            dropped = [key for key in self._pending if matches(key)]
            for key in dropped:
                del self._pending[key]
        while True:
            with self._lock:
                writing = any(matches(key) for key in self._in_flight)
            if not writing:
                return len(dropped)
            await self._write_done.wait()

    def _take(self) -> _Pending | None:
        with self._lock:
            if not self._pending:
                return None
            key, item = self._pending.popitem(last=False)
            self._in_flight[key] = item[1]
            return item

    def _span(self, snapshot: Snapshot, parent: Context | None) -> AbstractContextManager[object]:
        if self._tracer is None:
            return contextlib.nullcontext()
        return self._tracer.start_as_current_span(
            "snapshot write",
            context=parent,
            attributes={
                "aggregate.tenant_id": snapshot.key.tenant_id,
                "aggregate.type": snapshot.key.aggregate_type,
                "aggregate.id": str(snapshot.key.aggregate_id),
                "aggregate.version": snapshot.version,
            },
        )

    async def _write_pending(self) -> None:
        """Write pending snapshots one at a time, oldest offer first, until none is left."""
        while (item := self._take()) is not None:
            snapshot, offered_at, parent = item
            try:
                with self._span(snapshot, parent):
                    written = await self._store.save(snapshot)
            except Exception as exc:
                with self._lock:
                    self._failed += 1
                logger.warning(
                    "snapshot of %s at version %d not written: %s",
                    snapshot.key,
                    snapshot.version,
                    exc,
                    exc_info=not isinstance(exc, AggregateError),  # a bug: show where
                )
            except BaseException:
                with self._lock:
                    self._merge(snapshot, offered_at, parent)
                raise
            else:
                with self._lock:
                    if written:
                        self._written += 1
                    else:
                        self._superseded += 1
            finally:
                with self._lock:
                    self._in_flight.pop(snapshot.key, None)
                done, self._write_done = self._write_done, trio.Event()
                done.set()
