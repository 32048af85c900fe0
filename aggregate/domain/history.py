"""The command-id history of one aggregate: idempotency with no time window (DESIGN §4.4).

The last ``limit`` command ids are remembered with the versions and stream sequence their
events got, so a repeat answers the original result. When an id is forgotten, the largest
UUIDv7 timestamp forgotten so far becomes the *horizon*: a v7 id at or before the horizon
that is not remembered may have been applied already, so it is refused. Any v7 id after the
horizon was never forgotten, hence never seen. Other UUID kinds are de-duplicated within the
last ``limit`` commands only.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aggregate.domain.errors import CommandIdTooOldError, CorruptDataError
from aggregate.domain.ids import uuid7_timestamp_ms

if TYPE_CHECKING:
    from collections.abc import Iterable


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """Where the events of one applied command are: versions and stream sequence."""

    command_id: uuid.UUID
    first_version: int
    last_version: int
    stream_seq: int
    command_text: str = field(default="", compare=False, repr=False)
    """``str(command_id)``, made once: snapshots render every remembered entry."""
    json_text: str = field(default="", init=False, compare=False, repr=False)
    """``to_json()`` as compact JSON, made once: a snapshot every few commands renders up to
    ``AGGREGATE_COMMAND_HISTORY`` entries, nearly all of them rendered before."""

    def __post_init__(self) -> None:
        if not self.command_text:
            object.__setattr__(self, "command_text", str(self.command_id))
        # A UUID's text and integers need no JSON escaping.
        object.__setattr__(
            self,
            "json_text",
            f'["{self.command_text}",{self.first_version},{self.last_version},{self.stream_seq}]',
        )

    def to_json(self) -> list[Any]:
        return [self.command_text, self.first_version, self.last_version, self.stream_seq]

    @classmethod
    def from_json(cls, value: Any) -> HistoryEntry:
        try:
            command_id, first, last, seq = value
            if not all(type(n) is int for n in (first, last, seq)):
                raise TypeError("versions and sequence must be integers")
            return cls(uuid.UUID(command_id), first, last, seq)
        except (TypeError, ValueError) as exc:
            raise CorruptDataError(f"malformed command history entry {value!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class FrozenHistory:
    """A command history at one moment, as snapshots carry it. Freezing is cheap (a tuple
    of the entries); rendering to JSON happens when the snapshot is written, off the
    command path."""

    entries: tuple[HistoryEntry, ...]
    horizon_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"horizon_ms": self.horizon_ms, "entries": [e.to_json() for e in self.entries]}

    def to_json_text(self) -> str:
        """``to_json()`` as compact JSON text, joined from each entry's cached text."""
        entries = ",".join([e.json_text for e in self.entries])
        return f'{{"horizon_ms":{int(self.horizon_ms)},"entries":[{entries}]}}'

    @classmethod
    def from_json(cls, value: Any) -> FrozenHistory:
        """Raises: CorruptDataError: the value is malformed."""
        if not isinstance(value, dict) or not isinstance(value.get("entries"), list):
            raise CorruptDataError("malformed command history")
        horizon = value.get("horizon_ms", 0)
        if not isinstance(horizon, int):
            raise CorruptDataError("malformed command history horizon")
        return cls(tuple(HistoryEntry.from_json(e) for e in value["entries"]), horizon)


class CommandHistory:
    """The remembered command ids of one aggregate, oldest first."""

    __slots__ = ("_entries", "horizon_ms", "limit")

    def __init__(
        self, limit: int, entries: Iterable[HistoryEntry] = (), horizon_ms: int = 0
    ) -> None:
        if limit < 1:
            raise ValueError("history limit must be at least 1")
        self.limit = limit
        self.horizon_ms = horizon_ms
        self._entries: OrderedDict[uuid.UUID, HistoryEntry] = OrderedDict()
        for entry in entries:
            self.remember(entry)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[HistoryEntry]:
        return list(self._entries.values())

    def lookup(self, command_id: uuid.UUID) -> HistoryEntry | None:
        """The entry of a remembered command id, or None."""
        return self._entries.get(command_id)

    def check_new(self, command_id: uuid.UUID) -> None:
        """Check that an id that is not remembered can safely be applied.

        Raises:
            CommandIdTooOldError: a UUIDv7 id at or before the horizon.
        """
        ts = uuid7_timestamp_ms(command_id)
        if ts is not None and self.horizon_ms and ts <= self.horizon_ms:
            raise CommandIdTooOldError(
                f"command id {command_id} too old to de-duplicate: this aggregate only "
                f"remembers its last {self.limit} command ids; use a fresh UUIDv7"
            )

    def remember(self, entry: HistoryEntry) -> None:
        """Remember an applied command, forgetting the oldest beyond ``limit``."""
        self._entries[entry.command_id] = entry
        while len(self._entries) > self.limit:
            _, forgotten = self._entries.popitem(last=False)
            ts = uuid7_timestamp_ms(forgotten.command_id)
            if ts is not None and ts > self.horizon_ms:
                self.horizon_ms = ts

    def copy(self) -> CommandHistory:
        return CommandHistory(self.limit, self._entries.values(), self.horizon_ms)

    def freeze(self) -> FrozenHistory:
        return FrozenHistory(tuple(self._entries.values()), self.horizon_ms)

    @classmethod
    def thaw(cls, frozen: FrozenHistory, *, limit: int) -> CommandHistory:
        """A live history from a frozen one; a smaller ``limit`` forgets the oldest."""
        return cls(limit, frozen.entries, frozen.horizon_ms)

    def to_json(self) -> dict[str, Any]:
        return self.freeze().to_json()

    @classmethod
    def from_json(cls, value: Any, *, limit: int) -> CommandHistory:
        """Rebuild a history saved by ``to_json``; a smaller ``limit`` forgets the oldest.

        Raises:
            CorruptDataError: the value is malformed.
        """
        return cls.thaw(FrozenHistory.from_json(value), limit=limit)
