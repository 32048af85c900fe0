"""Per-source progress (the reference's ``BillingAggregatorState``) and the consumed-record
index entries (its ``ConsumedRecordIndex``): plain values and their JSON form.

Progress is an optimisation only: it lets a run skip what earlier runs consumed. Deleting it
never charges a record twice (the ledger aggregate holds every key it charged); it only
makes the next run read the whole source again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class FileMark:
    """What a run knows of one batch file: its listing stamp, content hash, and how many
    of its records are consumed (all of them once ``complete``)."""

    size: int
    mtime_ns: int
    sha256: str
    records_done: int
    complete: bool

    def as_json(self) -> list[Any]:
        return [self.size, self.mtime_ns, self.sha256, self.records_done, self.complete]

    @classmethod
    def from_json(cls, raw: Any) -> FileMark:
        size, mtime_ns, sha256, done, complete = raw
        return cls(int(size), int(mtime_ns), str(sha256), int(done), bool(complete))


@dataclass(frozen=True, slots=True)
class SourceError:
    """Why a source halted: where (file or stream sequence, record index) and the reason."""

    reason: str
    file: str | None = None
    record_index: int | None = None
    stream_seq: int | None = None
    at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "file": self.file,
            "record_index": self.record_index,
            "stream_seq": self.stream_seq,
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SourceError:
        return cls(
            str(raw.get("reason", "")),
            raw.get("file"),
            raw.get("record_index"),
            raw.get("stream_seq"),
            raw.get("at"),
        )


@dataclass(frozen=True, slots=True)
class SourceProgress:
    """One source's progress. ``cursor`` is the directory listing's digest (directory
    sources); ``stream_seq`` the last acknowledged stream sequence (JetStream sources)."""

    cursor: str = ""
    stream_seq: int = 0
    last_run_at: str | None = None
    records_consumed_total: int = 0
    last_error: SourceError | None = None
    files: dict[str, FileMark] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "cursor": self.cursor,
                "stream_seq": self.stream_seq,
                "last_run_at": self.last_run_at,
                "records_consumed_total": self.records_consumed_total,
                "last_error": self.last_error.as_dict() if self.last_error else None,
                "files": {name: mark.as_json() for name, mark in sorted(self.files.items())},
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SourceProgress:
        """Decode stored progress; anything unreadable is a fresh start (progress is only
        an optimisation, and a fresh start charges nothing twice)."""
        try:
            raw = json.loads(data)
            error = raw.get("last_error")
            return cls(
                cursor=str(raw.get("cursor", "")),
                stream_seq=int(raw.get("stream_seq", 0)),
                last_run_at=raw.get("last_run_at"),
                records_consumed_total=int(raw.get("records_consumed_total", 0)),
                last_error=SourceError.from_dict(error) if isinstance(error, dict) else None,
                files={n: FileMark.from_json(m) for n, m in dict(raw.get("files", {})).items()},
            )
        except (ValueError, TypeError, AttributeError):
            return cls()

    def view(self) -> dict[str, Any]:
        """The operator's view (``GET /admin/ingest/sources``)."""
        return {
            "cursor": self.cursor or None,
            "stream_seq": self.stream_seq or None,
            "last_run_at": self.last_run_at,
            "records_consumed_total": self.records_consumed_total,
            "files_consumed": sum(1 for m in self.files.values() if m.complete),
            "last_error": self.last_error.as_dict() if self.last_error else None,
        }


def merge_progress(
    stored: SourceProgress, base: SourceProgress, ours: SourceProgress
) -> SourceProgress:
    """Our run's progress written over progress another run stored meanwhile: the counts
    add up (each run counts only what it charged itself), the file marks and cursor are
    ours where we touched them, theirs elsewhere, and the stream sequence never goes back.
    """
    files = dict(stored.files)
    files.update({n: m for n, m in ours.files.items() if base.files.get(n) != m})
    for name in set(base.files) - set(ours.files):
        files.pop(name, None)  # the file is gone from the source
    return replace(
        ours,
        stream_seq=max(stored.stream_seq, ours.stream_seq),
        records_consumed_total=stored.records_consumed_total
        + (ours.records_consumed_total - base.records_consumed_total),
        files=files,
    )


@dataclass(frozen=True, slots=True)
class ConsumedEntry:
    """One entry of the consumed-record index: which record, charged where, from where."""

    idempotency_key: str
    account: str
    cost_cents: int
    node_name: str
    source: str
    applied_at: str
    aggregate_id: str

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "idempotency_key": self.idempotency_key,
                "account": self.account,
                "cost_cents": self.cost_cents,
                "node_name": self.node_name,
                "source": self.source,
                "applied_at": self.applied_at,
                "aggregate_id": self.aggregate_id,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ConsumedEntry:
        """Raises: ValueError, KeyError, TypeError: not an entry."""
        raw = json.loads(data)
        return cls(
            str(raw["idempotency_key"]),
            str(raw["account"]),
            int(raw["cost_cents"]),
            str(raw["node_name"]),
            str(raw["source"]),
            str(raw["applied_at"]),
            str(raw["aggregate_id"]),
        )

    def same_record(self, other: ConsumedEntry) -> bool:
        """Whether both describe the same usage (same account, cost and node)."""
        return (self.account, self.cost_cents, self.node_name) == (
            other.account,
            other.cost_cents,
            other.node_name,
        )

    def as_dict(self) -> dict[str, Any]:
        return dict(json.loads(self.to_json()))
