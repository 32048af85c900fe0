"""States of changes read back from the stream (a watch resuming from an old position).

A stored message holds events, not the state after them; a watch with a filter or with
``include_state`` needs that state. ``ReplayStates`` computes it with the type's ``apply``:
from the aggregate's earlier messages the first time an aggregate is met, then message by
message. It remembers at most ``max_aggregates`` states (the oldest is recomputed if met
again), so a long replay stays bounded in memory.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

from aggregate.domain.aggregate import program_events
from aggregate.domain.errors import UnknownAggregateTypeError

if TYPE_CHECKING:
    from aggregate.application.handler import TypeLookup
    from aggregate.application.ports import EventStore
    from aggregate.domain.envelopes import StoredRecord
    from aggregate.domain.ids import AggregateKey


class ReplayStates:
    """The state after each replayed message, for one watch's replay."""

    def __init__(self, store: EventStore, types: TypeLookup, *, max_aggregates: int = 1024):
        self._store = store
        self._types = types
        self._max = max_aggregates
        self._states: collections.OrderedDict[AggregateKey, tuple[int, dict[str, Any]]] = (
            collections.OrderedDict()
        )

    async def after(self, stored: StoredRecord) -> dict[str, Any] | None:
        """The state after ``stored``; None when its type is not configured here.

        Raises:
            BackendUnavailableError, CorruptDataError, ProgramError: reading or applying
                the aggregate's earlier messages failed.
        """
        record = stored.record
        key = record.key
        try:
            spec = self._types.get(key.aggregate_type)
        except UnknownAggregateTypeError:  # a type this node does not serve
            return None
        cached = self._states.pop(key, None)
        if cached is not None and cached[0] == record.first_version - 1:
            state = cached[1]
        else:
            earlier = await self._store.read(key)
            events = [e for item in earlier if item.seq < stored.seq for e in item.record.events]
            state = dict(spec.initial_state)
            if events:
                state = await spec.program.apply(state, program_events(tuple(events)))
        state = await spec.program.apply(state, program_events(record.events))
        self._states[key] = (record.last_version, state)
        while len(self._states) > self._max:
            self._states.popitem(last=False)
        return state
