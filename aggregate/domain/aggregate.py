"""The aggregate instance: state, version, stream position and command history.

Pure and synchronous. Programs run elsewhere (they may live in another process); the
instance only checks and records what they produced, so rehydration from snapshot + events
and live command handling go through the same ``accept`` step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aggregate.domain.envelopes import (
    AggregateView,
    CommandRecord,
    Event,
    JsonObject,
    StoredRecord,
    events_from_decision,
    utc_now_rfc3339,
)
from aggregate.domain.errors import CorruptDataError, TenantAccessDeniedError, quote
from aggregate.domain.history import CommandHistory, FrozenHistory, HistoryEntry

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence

    from aggregate.domain.ids import AggregateKey


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An aggregate's state at a version, with the stream sequence and command history."""

    key: AggregateKey
    version: int
    stream_seq: int
    state: JsonObject
    history: FrozenHistory
    created_at: str


class AggregateInstance:
    """One aggregate as the handler holds it in its cache."""

    __slots__ = ("events_since_snapshot", "history", "key", "last_seq", "state", "version")

    def __init__(
        self,
        key: AggregateKey,
        state: JsonObject,
        *,
        version: int = 0,
        last_seq: int = 0,
        history: CommandHistory,
    ) -> None:
        self.key = key
        self.state = state
        self.version = version
        self.last_seq = last_seq
        self.history = history
        self.events_since_snapshot = 0

    @classmethod
    def new(
        cls, key: AggregateKey, initial_state: JsonObject, *, history_limit: int
    ) -> AggregateInstance:
        """An aggregate with no events yet (version 0, stream sequence 0)."""
        return cls(key, copy.deepcopy(initial_state), history=CommandHistory(history_limit))

    @classmethod
    def from_snapshot(
        cls, snapshot: Snapshot, *, key: AggregateKey, history_limit: int
    ) -> AggregateInstance:
        """Rebuild from a snapshot read under ``key``.

        Raises:
            TenantAccessDeniedError: the snapshot belongs to another tenant.
            CorruptDataError: it belongs to another aggregate or is malformed.
        """
        if snapshot.key.tenant_id != key.tenant_id:
            raise TenantAccessDeniedError(
                f"snapshot read under tenant {key.tenant_id!r} belongs to tenant "
                f"{quote(snapshot.key.tenant_id)}"
            )
        if snapshot.key != key:
            raise CorruptDataError(f"snapshot of {snapshot.key} was read under {key}")
        if snapshot.version < 0 or snapshot.stream_seq < 0:
            raise CorruptDataError(f"snapshot of {key} has a negative version or sequence")
        history = CommandHistory.thaw(snapshot.history, limit=history_limit)
        return cls(
            key,
            copy.deepcopy(snapshot.state),
            version=snapshot.version,
            last_seq=snapshot.stream_seq,
            history=history,
        )

    def snapshot(self) -> Snapshot:
        """A snapshot of the current state. Cheap: programs return new state objects and
        the instance never changes one in place, so the state is shared, not copied; the
        history is frozen as a tuple and rendered to JSON only when the snapshot is
        written."""
        return Snapshot(
            key=self.key,
            version=self.version,
            stream_seq=self.last_seq,
            state=self.state,
            history=self.history.freeze(),
            created_at=utc_now_rfc3339(),
        )

    def view(self) -> AggregateView:
        return AggregateView(self.key, self.version, copy.deepcopy(self.state), self.last_seq)

    def lookup(self, command_id: uuid.UUID) -> HistoryEntry | None:
        """The history entry of an already applied command id, else None after checking
        the id is safe to apply.

        Raises:
            CommandIdTooOldError: see ``CommandHistory.check_new``.
        """
        entry = self.history.lookup(command_id)
        if entry is None:
            self.history.check_new(command_id)
        return entry

    def record_for(
        self,
        command_id: uuid.UUID,
        decided: list[Any],
        *,
        correlation_id: str,
        trace_id: str,
    ) -> CommandRecord:
        """The message to append for a command whose ``decide`` returned ``decided``.

        Raises:
            InvalidArgumentError: an event value is malformed.
        """
        events = events_from_decision(decided, first_version=self.version + 1)
        return CommandRecord(
            key=self.key,
            command_id=command_id,
            correlation_id=correlation_id,
            trace_id=trace_id,
            first_version=self.version + 1,
            events=events,
        )

    def check_next(self, seq: int, record: CommandRecord) -> None:
        """Check that a stored record is the next one of this aggregate.

        Raises:
            TenantAccessDeniedError: it belongs to another tenant.
            CorruptDataError: another aggregate, a gap or overlap in versions, or a
                sequence that does not move forward.
        """
        if record.key.tenant_id != self.key.tenant_id:
            raise TenantAccessDeniedError(
                f"record of tenant {quote(record.key.tenant_id)} offered to {self.key}"
            )
        if record.key != self.key:
            raise CorruptDataError(f"record of {record.key} offered to {self.key}")
        if record.first_version != self.version + 1:
            raise CorruptDataError(
                f"{self.key} is at version {self.version} but the record at stream sequence "
                f"{seq} starts at version {record.first_version}"
            )
        if seq <= self.last_seq:
            raise CorruptDataError(
                f"{self.key}: stream sequence {seq} is not after {self.last_seq}"
            )

    def advance(self, stored: Sequence[StoredRecord], new_state: JsonObject) -> None:
        """Record that ``stored`` (this aggregate's next records, in order) led to
        ``new_state``. All records are checked before anything changes.

        Raises:
            TenantAccessDeniedError, CorruptDataError: see ``check_next``.
        """
        probe = AggregateInstance(
            self.key, {}, version=self.version, last_seq=self.last_seq, history=self.history
        )
        for item in stored:
            probe.check_next(item.seq, item.record)
            probe.version = item.record.last_version
            probe.last_seq = item.seq
        for item in stored:
            self._record(item.seq, item.record)
        self.state = new_state

    def _record(self, seq: int, record: CommandRecord) -> None:
        self.version = record.last_version
        self.last_seq = seq
        self.events_since_snapshot += len(record.events)
        self.history.remember(
            HistoryEntry(record.command_id, record.first_version, record.last_version, seq)
        )

    def accept(self, seq: int, record: CommandRecord, new_state: JsonObject) -> None:
        """Record that ``record`` is stored at ``seq`` and led to ``new_state``.

        Raises:
            TenantAccessDeniedError, CorruptDataError: see ``check_next``.
        """
        self.check_next(seq, record)
        self._record(seq, record)
        self.state = new_state


def program_events(events: tuple[Event, ...]) -> list[JsonObject]:
    """The values ``apply`` receives for these events."""
    return [event.as_program_value() for event in events]
