"""The command-id history of one aggregate: idempotency with no time window (DESIGN §4.4).

The last ``limit`` command ids are remembered with the versions and stream sequence their
events got, so a repeat answers the original result. When an id is forgotten, the largest
UUIDv7 timestamp forgotten so far becomes the *horizon*: a v7 id at or before the horizon
that is not remembered may have been applied already, so it is refused. Any v7 id after the
horizon was never forgotten, hence never seen. Other UUID kinds are de-duplicated within the
last ``limit`` commands only.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aggregate.domain.errors import CommandIdTooOldError, CorruptDataError, quote
from aggregate.domain.ids import UUID_TEXT, canonical_uuid_text, uuid7_timestamp_ms

if TYPE_CHECKING:
    from collections.abc import Iterable


Row = tuple[str, str]
"""One remembered command as the history keeps it: ``(the command id's canonical text, the
entry as compact JSON: '["<id>",first version,last version,stream sequence]')``; the
numbers are read from the JSON only when a repeated command looks its entry up. Two
strings: the cyclic garbage collector stops tracking such tuples, so a full cache of long
histories (up to ``AGGREGATE_CACHE_SIZE`` x ``AGGREGATE_COMMAND_HISTORY`` entries) adds
nothing to its pauses. Objects per entry (a dataclass and a ``uuid.UUID`` each) made a
full collection take ~350 ms with 1,024 aggregates of 1,000 remembered commands on the
benchmark machine, which showed as p99 latency spikes."""


def _row(text: str, first: int, last: int, seq: int) -> Row:
    # A UUID's canonical text and integers need no JSON escaping.
    return (text, f'["{text}",{first},{last},{seq}]')


def _numbers(row: Row) -> tuple[int, int, int]:
    """First version, last version and stream sequence of a row."""
    first, last, seq = row[1][40:-1].split(",")
    return int(first), int(last), int(seq)


def _v7_ms(text: str) -> int | None:
    """``uuid7_timestamp_ms`` of a UUID given as its canonical text."""
    if text[14] == "7" and text[19] in "89ab":
        return int(text[:8] + text[9:13], 16)
    return None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """Where the events of one applied command are: versions and stream sequence."""

    command_id: uuid.UUID
    first_version: int
    last_version: int
    stream_seq: int

    @property
    def row(self) -> Row:
        return _row(str(self.command_id), self.first_version, self.last_version, self.stream_seq)

    @classmethod
    def of_row(cls, row: Row) -> HistoryEntry:
        return cls(uuid.UUID(row[0]), *_numbers(row))

    def to_json(self) -> list[Any]:
        return [str(self.command_id), self.first_version, self.last_version, self.stream_seq]

    @classmethod
    def from_json(cls, value: Any) -> HistoryEntry:
        """Raises: CorruptDataError: the value is not ``[uuid text, int, int, int]``."""
        return cls.of_row(_row_from_json(value))


_TEXT_HEAD = re.compile(r'\{"horizon_ms":(0|[1-9][0-9]*),"entries":\[')
_TEXT_ENTRY = re.compile(
    rf'(\["({UUID_TEXT})",(?:0|[1-9][0-9]*),(?:0|[1-9][0-9]*),(?:0|[1-9][0-9]*)\])(?:,|\Z)'
)
"""The layout ``FrozenHistory.to_json_text`` writes, read back without ``json.loads``."""


def _row_from_json(value: Any) -> Row:
    try:
        text, first, last, seq = value
        if not all(type(n) is int for n in (first, last, seq)):
            raise TypeError("versions and sequence must be integers")
        canonical = canonical_uuid_text(text)
        if canonical is None:
            raise TypeError("the command id must be a UUID in the canonical form")
        return _row(canonical, first, last, seq)
    except (TypeError, ValueError) as exc:
        raise CorruptDataError(f"malformed command history entry {quote(value)}: {exc}") from None


@dataclass(frozen=True, slots=True)
class FrozenHistory:
    """A command history at one moment, as snapshots carry it. Freezing is cheap (a tuple
    of the history's rows, shared); rendering to JSON happens when the snapshot is
    written, off the command path, by joining each row's cached text."""

    rows: tuple[Row, ...] = ()
    horizon_ms: int = 0

    @property
    def entries(self) -> tuple[HistoryEntry, ...]:
        return tuple(HistoryEntry.of_row(r) for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {"horizon_ms": self.horizon_ms, "entries": [e.to_json() for e in self.entries]}

    def to_json_text(self) -> str:
        """``to_json()`` as compact JSON text."""
        entries = ",".join([r[1] for r in self.rows])
        return f'{{"horizon_ms":{int(self.horizon_ms)},"entries":[{entries}]}}'

    @classmethod
    def from_json_text(cls, text: str) -> FrozenHistory:
        """Read back JSON text: the layout ``to_json_text`` writes is matched directly
        (each entry's text is kept as its cached rendering); any other valid JSON goes
        through ``from_json``.

        Raises:
            CorruptDataError: the text is not JSON, or not a command history.
        """
        head = _TEXT_HEAD.match(text)
        if head is not None and text.endswith("]}"):
            body = text[head.end() : -2]
            rows: list[Row] = []
            expected = 0
            for match in _TEXT_ENTRY.finditer(body):
                if match.start() != expected:
                    break
                rows.append((match[2], match[1]))
                expected = match.end()
            else:
                if expected == len(body) and not body.endswith(","):
                    return cls(tuple(rows), int(head.group(1)))
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise CorruptDataError(f"malformed command history: {exc}") from None
        return cls.from_json(value)

    @classmethod
    def from_json(cls, value: Any) -> FrozenHistory:
        """Raises: CorruptDataError: the value is malformed."""
        if not isinstance(value, dict) or not isinstance(value.get("entries"), list):
            raise CorruptDataError("malformed command history")
        horizon = value.get("horizon_ms", 0)
        if type(horizon) is not int:
            raise CorruptDataError("malformed command history horizon")
        return cls(tuple(_row_from_json(e) for e in value["entries"]), horizon)


class CommandHistory:
    """The remembered command ids of one aggregate, oldest first."""

    __slots__ = ("_rows", "horizon_ms", "limit")

    def __init__(
        self, limit: int, entries: Iterable[HistoryEntry] = (), horizon_ms: int = 0
    ) -> None:
        if limit < 1:
            raise ValueError("history limit must be at least 1")
        self.limit = limit
        self.horizon_ms = horizon_ms
        # A plain dict (insertion-ordered): once its rows are untracked, the collector
        # stops tracking the dict too, until a new row goes in.
        self._rows: dict[str, Row] = {}
        for entry in entries:
            self.remember(entry)

    def __len__(self) -> int:
        return len(self._rows)

    def entries(self) -> list[HistoryEntry]:
        return [HistoryEntry.of_row(r) for r in self._rows.values()]

    def lookup(self, command_id: uuid.UUID) -> HistoryEntry | None:
        """The entry of a remembered command id, or None."""
        row = self._rows.get(str(command_id))
        return None if row is None else HistoryEntry(command_id, *_numbers(row))

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
        self._remember_row(entry.row)

    def _remember_row(self, row: Row) -> None:
        rows = self._rows
        rows[row[0]] = row
        while len(rows) > self.limit:
            forgotten = next(iter(rows))
            del rows[forgotten]
            ts = _v7_ms(forgotten)
            if ts is not None and ts > self.horizon_ms:
                self.horizon_ms = ts

    def copy(self) -> CommandHistory:
        return CommandHistory._of_rows(self.limit, self._rows.values(), self.horizon_ms)

    @classmethod
    def _of_rows(cls, limit: int, rows: Iterable[Row], horizon_ms: int) -> CommandHistory:
        history = cls(limit, (), horizon_ms)
        for row in rows:
            history._remember_row(row)
        return history

    def freeze(self) -> FrozenHistory:
        return FrozenHistory(tuple(self._rows.values()), self.horizon_ms)

    @classmethod
    def thaw(cls, frozen: FrozenHistory, *, limit: int) -> CommandHistory:
        """A live history from a frozen one; a smaller ``limit`` forgets the oldest."""
        return cls._of_rows(limit, frozen.rows, frozen.horizon_ms)

    def to_json(self) -> dict[str, Any]:
        return self.freeze().to_json()

    @classmethod
    def from_json(cls, value: Any, *, limit: int) -> CommandHistory:
        """Rebuild a history saved by ``to_json``; a smaller ``limit`` forgets the oldest.

        Raises:
            CorruptDataError: the value is malformed.
        """
        return cls.thaw(FrozenHistory.from_json(value), limit=limit)
