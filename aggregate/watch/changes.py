"""What a watcher receives: one committed command message of one aggregate, and the subset
of changes a watcher asked for."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable

    from aggregate.domain.envelopes import Event
    from aggregate.domain.ids import AggregateKey

_FIXED_COST = 256
"""Bytes counted per change on top of its JSON (ids, envelope): queues are bounded in bytes
by these estimates, which err on the high side."""


@dataclass(frozen=True, slots=True)
class Change:
    """One committed command message: the aggregate's events at ``position`` (the stream
    sequence of the message) and, when the command path knew it, the state after them."""

    key: AggregateKey
    version: int
    position: int
    command_id: uuid.UUID
    events: tuple[Event, ...]
    state: dict[str, Any] | None = None
    size: int = field(default=0, compare=False)

    @classmethod
    def of(
        cls,
        key: AggregateKey,
        *,
        version: int,
        position: int,
        command_id: uuid.UUID,
        events: tuple[Event, ...],
        state: dict[str, Any] | None,
    ) -> Change:
        """A change with its size estimated (the bytes a queue counts for it)."""
        size = _FIXED_COST + sum(len(json.dumps(e.payload)) + 128 for e in events)
        if state is not None:
            size += len(json.dumps(state))
        return cls(key, version, position, command_id, events, state, size)

    @property
    def updated_at(self) -> str:
        return self.events[-1].timestamp if self.events else ""


@dataclass(frozen=True, slots=True)
class ChangeView:
    """A change as the filter language sees a view (``ViewLike`` of the query planner)."""

    aggregate_id: str
    version: int
    updated_at: str
    state: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WatchSubset:
    """Which changes of one tenant a watcher wants: a type ('' = every type), an aggregate
    (None = every one) and a predicate over the new view (None = no filter)."""

    tenant_id: str
    aggregate_type: str = ""
    aggregate_id: uuid.UUID | None = None
    predicate: Callable[[ChangeView], bool] | None = None

    @property
    def needs_state(self) -> bool:
        return self.predicate is not None

    def matches(self, change: Change) -> bool:
        key = change.key
        if key.tenant_id != self.tenant_id:
            return False
        if self.aggregate_type and key.aggregate_type != self.aggregate_type:
            return False
        if self.aggregate_id is not None and key.aggregate_id != self.aggregate_id:
            return False
        if self.predicate is None:
            return True
        if change.state is None:
            return False
        view = ChangeView(str(key.aggregate_id), change.version, change.updated_at, change.state)
        return self.predicate(view)
