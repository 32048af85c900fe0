"""The watch hub: committed changes fanned out in process to per-watcher bounded queues.

Fed by the command path (the handler's ``ChangeSink`` reports, through ``TeeSink``: each
append started, the committed change with its new state, each append ended), it releases
changes in position order (``Sequencer``), fans them out in its own task (``serve``) and
keeps the latest ones in a buffer bounded in count and bytes, so a watcher resuming from a
recent position is served from memory (as packed text, which the garbage collector does not
walk: ``aggregate.watch.changes.Packed``). A tenant's buffer is complete after its *floor*:
every change of the tenant with a greater position is in it. A watcher asking for older
changes reads them from the stream first (the gRPC servicer does), then takes the live ones,
skipping what it already sent.

A watcher's queue is bounded in changes and bytes; one that is not read fast enough is ended
with ``WatcherTooSlowError`` and its queue dropped at once, so a slow client costs at most
its bound. Runs on one thread (the island loop).
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from aggregate.domain.errors import ResourceExhaustedError
from aggregate.watch.changes import Change, Packed, packed_may_match, unpack
from aggregate.watch.errors import (
    WatcherTooSlowError,
    WatchInterruptedError,
    WatchTenantMovedError,
)
from aggregate.watch.order import Sequencer

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskStatus

    from aggregate.domain.changes import CommittedChange
    from aggregate.domain.envelopes import CommandRecord
    from aggregate.domain.errors import AggregateError
    from aggregate.watch.changes import WatchSubset

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatchLimits:
    """Bounds of the hub's memory; the service builds them from ``Settings``."""

    queue_changes: int = 1000
    queue_bytes: int = 4 * 1024 * 1024
    buffer_changes: int = 10_000
    buffer_bytes: int = 32 * 1024 * 1024
    max_watchers: int = 1000

    def __post_init__(self) -> None:
        if min(self.queue_changes, self.queue_bytes, self.buffer_bytes, self.max_watchers) < 1:
            raise ValueError("watch limits must be >= 1 (buffer_changes >= 0)")
        if self.buffer_changes < 0:
            raise ValueError("buffer_changes must be >= 0")


class Watcher:
    """One watcher's queue of changes not yet taken. ``next`` them until it raises."""

    def __init__(self, hub: WatchHub, subset: WatchSubset) -> None:
        self.subset = subset
        self._hub = hub
        self._queue: collections.deque[Change] = collections.deque()
        self._bytes = 0
        self._wake = anyio.Event()
        self.ended: AggregateError | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def offer(self, change: Change) -> None:
        if self.ended is not None or not self.subset.matches(change):
            return
        limits = self._hub.limits
        if len(self._queue) >= limits.queue_changes or (
            self._bytes + change.size > limits.queue_bytes
        ):
            self.end(
                WatcherTooSlowError(
                    f"this watch fell {len(self._queue)} changes ({self._bytes} bytes) behind "
                    f"(limits: {limits.queue_changes} changes, {limits.queue_bytes} bytes); "
                    "read faster, or resume from x-resume-position"
                )
            )
            return
        self._queue.append(change)
        self._bytes += change.size
        self._wake.set()

    def end(self, reason: AggregateError) -> None:
        """End the watch: the queue is dropped, ``next`` raises ``reason``."""
        if self.ended is None:
            self.ended = reason
            self._queue.clear()
            self._bytes = 0
            self._hub._remove(self)
            self._wake.set()

    async def next(self) -> Change:
        """The next change, waiting for one.

        Raises:
            WatcherTooSlowError, WatchTenantMovedError, WatchInterruptedError: the watch
                ended (see each).

        Cancellation: nothing is lost; the change stays queued.
        """
        while not self._queue:
            if self.ended is not None:
                raise self.ended
            await self._wake.wait()
            self._wake = anyio.Event()
        if self.ended is not None:
            raise self.ended
        change = self._queue.popleft()
        self._bytes -= change.size
        return change

    def close(self) -> None:
        """Unregister (the client went away); idempotent."""
        self._queue.clear()
        self._bytes = 0
        self._hub._remove(self)


class WatchHub:
    """Changes in, watchers out; see the module docstring."""

    def __init__(self, limits: WatchLimits | None = None) -> None:
        self.limits = limits or WatchLimits()
        self.sequencer = Sequencer(self._release, self._uncertain)
        self.watermark = 0
        """The position of the last change released (any tenant)."""
        self._buffer: collections.deque[Packed] = collections.deque()
        self._buffer_bytes = 0
        self._floors: dict[str, int] = {}
        self._blocked: dict[str, int] = {}
        self._tenant_of: dict[int, str] = {}
        self._offered: CommittedChange | None = None
        self._ready: list[tuple[Change, int]] = []
        self._flush: anyio.Event | None = None
        self._watchers: dict[str, set[Watcher]] = {}
        self._count = 0
        self.closed = False

    def start_after(self, position: int) -> None:
        """The stream's end when the node starts: a watch from now that sees no change
        resumes after it (never from 0, which means from now)."""
        self.watermark = max(self.watermark, position)

    # ---- the command path's side --------------------------------------------------
    def begin(self) -> int:
        """A ticket for an append about to be sent."""
        return self.sequencer.begin()

    def stored(
        self,
        ticket: int,
        position: int,
        record: CommandRecord,
        state: dict[str, Any] | None = None,
    ) -> None:
        """The append of ``ticket`` stored ``record`` at ``position`` (``state``: the
        aggregate's state after it, when known)."""
        change = Change.of(
            record.key,
            version=record.last_version,
            position=position,
            command_id=record.command_id,
            events=record.events,
            state=state,
        )
        self.sequencer.acknowledged(ticket, change)

    def not_stored(self, ticket: int) -> None:
        self.sequencer.not_stored(ticket)

    def unknown(self, ticket: int, tenant_id: str) -> None:
        self.sequencer.unknown(ticket, tenant_id)

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Fan released changes out to the watchers until cancelled. The fan-out runs in
        this task, off the handler's path.

        Cancellation: stops; changes not yet fanned out are dropped (the service stops).
        """
        self._flush = anyio.Event()  # made here: the hub may be built on another loop
        task_status.started()
        while True:
            if not self._ready:
                await self._flush.wait()
                self._flush = anyio.Event()
            self._fan_out_ready()

    # ---- ChangeSink (the handler's reports, through ``TeeSink``) --------------------
    def append_started(self, tenant_id: str) -> int:
        ticket = self.begin()
        self._tenant_of[ticket] = tenant_id
        return ticket

    def offer(self, change: CommittedChange) -> None:
        # The handler ends the append right after offering it, before it awaits again.
        self._offered = change

    def append_ended(self, ticket: int, *, uncertain: bool) -> None:
        tenant_id = self._tenant_of.pop(ticket, "")
        offered, self._offered = self._offered, None
        if uncertain:
            self.unknown(ticket, tenant_id)
        elif offered is None:
            self.not_stored(ticket)
        else:
            self.stored_change(ticket, offered)

    def stored_change(self, ticket: int, change: CommittedChange) -> None:
        """The append of ``ticket`` stored ``change`` (with its new state)."""
        self.sequencer.acknowledged(
            ticket,
            Change.of(
                change.key,
                version=change.version,
                position=change.position,
                command_id=change.command_id,
                events=change.events,
                state=change.state,
            ),
        )

    # ---- the watchers' side -------------------------------------------------------
    def watch(self, subset: WatchSubset, from_position: int) -> tuple[Watcher, list[Change] | None]:
        """Register a watcher of ``subset`` for every change after ``from_position`` (0: from
        now). Returns it with the buffered changes it must send first, or with None when
        the buffer does not reach back that far: the caller then reads the stream after
        ``from_position`` (``watermark`` for 0) before taking from the watcher, skipping
        changes at or before the last position it sent.

        Raises:
            ResourceExhaustedError: ``max_watchers`` watchers are open.
            WatchInterruptedError: the hub is closed (the service is shutting down).
        """
        if self.closed:
            raise WatchInterruptedError("the server is shutting down; resume on another node")
        if self._count >= self.limits.max_watchers:
            raise ResourceExhaustedError(
                f"this node serves {self.limits.max_watchers} watches already (max watchers); "
                "retry later or on another node"
            )
        tenant = subset.tenant_id
        watcher = Watcher(self, subset)
        self._watchers.setdefault(tenant, set()).add(watcher)
        self._count += 1
        floor = self._floors.get(tenant)
        backlog: list[Change] | None
        if from_position == 0:
            backlog = None if tenant in self._blocked else []
        elif floor is not None and from_position >= floor:
            backlog = [
                change
                for packed in self._buffer
                if packed[0] > from_position
                and packed_may_match(packed, subset)
                and subset.matches(change := unpack(packed))
            ]
        else:
            backlog = None
        return watcher, backlog

    @property
    def watchers(self) -> int:
        return self._count

    @property
    def buffered(self) -> tuple[int, int]:
        """Changes and bytes in the buffer."""
        return len(self._buffer), self._buffer_bytes

    def floor(self, tenant_id: str) -> int | None:
        """The position after which the buffer holds every change of the tenant, if any."""
        return self._floors.get(tenant_id)

    def forget_tenant(self, tenant_id: str, owner: str | None = None) -> int:
        """The tenant left this node: end its watches (UNAVAILABLE naming ``owner``) and
        forget its buffer. Returns how many watches ended."""
        where = f"; shard {owner!r} owns it now" if owner else ""
        ended = self._end_tenant(
            tenant_id,
            lambda: WatchTenantMovedError(
                f"tenant {tenant_id!r} is no longer served by this node{where}; resume "
                "there from x-resume-position",
                owner=owner,
            ),
        )
        self._floors.pop(tenant_id, None)
        return ended

    def close(self) -> None:
        """The service is shutting down: end every watch (UNAVAILABLE), refuse new ones."""
        self.closed = True
        for tenant in list(self._watchers):
            self._end_tenant(
                tenant,
                lambda: WatchInterruptedError(
                    "the server is shutting down; resume on another node from x-resume-position"
                ),
            )

    # ---- internals ----------------------------------------------------------------
    def _release(self, change: Change, ticket: int) -> None:
        self._ready.append((change, ticket))
        if self._flush is not None:
            self._flush.set()

    def _fan_out_ready(self) -> None:
        # A method of its own: the batch is not kept alive by a local while ``serve`` waits.
        ready, self._ready = self._ready, []
        for change, ticket in ready:
            self._fan_out(change, ticket)

    def _fan_out(self, change: Change, ticket: int) -> None:
        self.watermark = max(self.watermark, change.position)
        tenant = change.key.tenant_id
        blocked = self._blocked.get(tenant)
        if blocked is not None and ticket < blocked:
            # Released in order, but an append of unknown outcome may sit before it.
            pass
        else:
            self._blocked.pop(tenant, None)
            self._floors.setdefault(tenant, change.position - 1)
            self._buffer_append(change)
        for watcher in list(self._watchers.get(tenant, ())):
            watcher.offer(change)

    def _buffer_append(self, change: Change) -> None:
        limits = self.limits
        self._buffer.append(change.packed)  # atoms only: out of the collector's walks
        self._buffer_bytes += change.size
        while self._buffer and (
            len(self._buffer) > limits.buffer_changes or self._buffer_bytes > limits.buffer_bytes
        ):
            position, size, tenant, *_ = self._buffer.popleft()
            self._buffer_bytes -= size
            if tenant in self._floors:
                self._floors[tenant] = max(self._floors[tenant], position)

    def _uncertain(self, tenant_id: str) -> None:
        log.warning(
            "an append of tenant %s ended with an unknown outcome; its watches resume from "
            "the stream",
            tenant_id,
        )
        self._blocked[tenant_id] = self.sequencer.next_ticket
        self._floors.pop(tenant_id, None)
        self._end_tenant(
            tenant_id,
            lambda: WatchInterruptedError(
                "a change of this tenant may not have reached the watch; resume from "
                "x-resume-position"
            ),
        )

    def _end_tenant(self, tenant_id: str, reason: Callable[[], AggregateError]) -> int:
        watchers = list(self._watchers.get(tenant_id, ()))
        for watcher in watchers:
            watcher.end(reason())
        return len(watchers)

    def _remove(self, watcher: Watcher) -> None:
        group = self._watchers.get(watcher.subset.tenant_id)
        if group is not None and watcher in group:
            group.discard(watcher)
            self._count -= 1
            if not group:
                del self._watchers[watcher.subset.tenant_id]
