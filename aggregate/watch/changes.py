"""What a watcher receives: one committed command message of one aggregate, and the subset
of changes a watcher asked for."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aggregate.domain.envelopes import Event
from aggregate.domain.ids import AggregateKey, uuid_text

if TYPE_CHECKING:
    from collections.abc import Callable

_FIXED_COST = 256
"""Bytes counted per change on top of its JSON (ids, envelope): queues are bounded in bytes
by these estimates, which err on the high side."""

_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _text(
    version: int, command_id: uuid.UUID, events: tuple[Event, ...], state: dict[str, Any] | None
) -> str:
    """What ``Change.text`` holds; ``unpack`` reads it back."""
    return _COMPACT.encode(
        [
            version,
            uuid_text(command_id),
            [
                [uuid_text(e.event_id), e.event_type, e.version, e.payload, e.timestamp]
                for e in events
            ],
            state,
        ]
    )


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
    text: str = field(default="", compare=False, repr=False)
    """Everything but the key and position as JSON (set by ``of``; ``packed`` reads it)."""

    @property
    def packed(self) -> Packed:
        """This change as the hub's buffer keeps it; ``unpack`` gives it back."""
        key = self.key
        text = self.text or _text(self.version, self.command_id, self.events, self.state)
        return (
            self.position,
            self.size,
            key.tenant_id,
            key.aggregate_type,
            uuid_text(key.aggregate_id),
            text,
        )

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
        """A change with its size estimated (the bytes a queue counts for it): its JSON text
        (``packed``), which is made here once, plus a fixed cost."""
        text = _text(version, command_id, events, state)
        return cls(key, version, position, command_id, events, state, _FIXED_COST + len(text), text)

    @property
    def updated_at(self) -> str:
        return self.events[-1].timestamp if self.events else ""


Packed = tuple[int, int, str, str, str, str]
"""A change as the watch hub's buffer keeps it: ``(position, size, tenant, type, aggregate
id as text, the rest as JSON text)``. Only strings and integers: the cyclic garbage
collector stops tracking such tuples, so a full buffer (up to
``AGGREGATE_WATCH_BUFFER_CHANGES``) adds nothing to its full collections. Kept as objects
(a change, its key, events and UUIDs: six tracked objects each), the default buffer of
10,000 made every full collection walk ~60,000 more objects and pause the command path
14-25 ms every 10-15 s under load on the benchmark machine."""


def unpack(packed: Packed) -> Change:
    """The change ``Change.packed`` made, equal to it.

    Raises:
        ValueError: not something ``Change.packed`` made.
    """
    position, size, tenant_id, aggregate_type, aggregate_id, text = packed
    version, command_id, events, state = json.loads(text)
    return Change(
        AggregateKey(tenant_id, aggregate_type, uuid.UUID(aggregate_id)),
        version,
        position,
        uuid.UUID(command_id),
        tuple(Event(uuid.UUID(e[0]), e[1], e[2], e[3], e[4]) for e in events),
        state,
        size,
        text,
    )


def packed_may_match(packed: Packed, subset: WatchSubset) -> bool:
    """Whether a packed change is of the subset's tenant, type and aggregate (its
    predicate is for ``subset.matches`` on the unpacked change)."""
    if packed[2] != subset.tenant_id:
        return False
    if subset.aggregate_type and packed[3] != subset.aggregate_type:
        return False
    return subset.aggregate_id is None or packed[4] == uuid_text(subset.aggregate_id)


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
