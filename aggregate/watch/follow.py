"""One watch from start to end: register, send what came before, then the live changes.

A ``Follow`` registers its watcher with the hub when it is made, before anything is read,
so no change can fall between the older ones and the live ones. ``changes`` then yields the
hub's buffered changes after ``from_position``, or, when the buffer does not reach back that
far, the subset's stored changes read from the stream (``ChangeSource``, with their states
recomputed by ``ReplayStates`` when the watch needs them); then the live changes, skipping
any at or before what it already yielded. ``position`` is where a resume starts: every
change of the subset up to it has been yielded and taken by the caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aggregate.watch.changes import Change
from aggregate.watch.replay import ReplayStates

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator

    from aggregate.application.handler import TypeLookup
    from aggregate.application.ports import EventStore
    from aggregate.domain.envelopes import StoredRecord
    from aggregate.watch.changes import WatchSubset
    from aggregate.watch.hub import WatchHub
    from aggregate.watch.source import ChangeSource

REPLAY_PAGE = 256
"""Messages read from the stream per request while a watch catches up."""


class Follow:
    """One watch of ``subset`` after ``from_position`` (0: from now).

    Raises (on construction): what ``WatchHub.watch`` raises.
    """

    def __init__(
        self,
        hub: WatchHub,
        subset: WatchSubset,
        from_position: int,
        *,
        source: ChangeSource,
        store: EventStore,
        types: TypeLookup,
        include_state: bool = False,
    ) -> None:
        self.subset = subset
        self.position = from_position or hub.watermark
        self._source = source
        self._states = ReplayStates(store, types) if include_state or subset.needs_state else None
        self._watcher, self._backlog = hub.watch(subset, from_position)

    async def changes(self) -> AsyncGenerator[Change]:
        """The watch's changes, in position order, until it ends.

        Raises:
            WatcherTooSlowError, WatchTenantMovedError, WatchInterruptedError: the hub ended
                the watch; resume from ``position``.
            BackendUnavailableError, CorruptDataError: reading the stream failed.

        Cancellation (or closing the iterator): the watcher is unregistered.
        """
        try:
            if self._backlog is None:
                async for change in self._replay():
                    yield change
            else:
                for change in self._backlog:
                    yield change
                    self.position = change.position
            while True:
                change = await self._watcher.next()
                if change.position <= self.position:
                    continue
                yield change
                self.position = change.position
        finally:
            self._watcher.close()

    def close(self) -> None:
        self._watcher.close()

    async def _replay(self) -> AsyncIterator[Change]:
        more = True
        while more:
            records, more = await self._source.read_after(self.subset, self.position, REPLAY_PAGE)
            for stored in records:
                change = await self._change_of(stored)
                if self.subset.matches(change):
                    yield change
                self.position = stored.seq
            if not records:
                return

    async def _change_of(self, stored: StoredRecord) -> Change:
        record = stored.record
        state = await self._states.after(stored) if self._states is not None else None
        return Change.of(
            record.key,
            version=record.last_version,
            position=stored.seq,
            command_id=record.command_id,
            events=record.events,
            state=state,
        )
