"""The ports the command handler is written against (DESIGN §2).

Adapters implement them: JetStream and the in-memory store (``EventStore``), SQLite
(``SnapshotStore``), the snapshotter (``SnapshotSink``), the placement gate
(``TenantGate``), the read side's change feed (``ChangeSink``). All async methods are
written for anyio: they run on the asyncio island in
the service and under Trio in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from aggregate.domain.aggregate import Snapshot
    from aggregate.domain.changes import CommittedChange
    from aggregate.domain.context import RequestContext
    from aggregate.domain.envelopes import CommandRecord, StoredRecord
    from aggregate.domain.ids import AggregateKey


class EventStore(Protocol):
    """Append-only store of command records, one subject per aggregate (DESIGN §4)."""

    async def append(
        self, record: CommandRecord, *, expected_last_seq: int, context: RequestContext
    ) -> int:
        """Append one record atomically if the aggregate's last stream sequence is
        ``expected_last_seq`` (0: the aggregate has no messages). Returns the new sequence.

        A publish whose first attempt may have succeeded is retried with the same message
        id; JetStream then answers a conflict, which the caller resolves through the
        aggregate's history.

        Raises:
            VersionConflictError: the aggregate's last sequence is not ``expected_last_seq``.
            DuplicateAppendError: a message with this record's ``message_id`` is already
                stored within the store's duplicate window; nothing new was stored.
            BackendUnavailableError: the store cannot be reached; the append may or may not
                have happened.

        Cancellation: the append may or may not have happened.
        """
        ...

    async def read(self, key: AggregateKey, *, after_seq: int = 0) -> list[StoredRecord]:
        """All records of ``key`` with a stream sequence greater than ``after_seq``, in order.

        Raises:
            TenantAccessDeniedError: a stored record names another tenant.
            CorruptDataError: a stored record is malformed.
            BackendUnavailableError: the store cannot be reached.
        """
        ...

    async def read_at(self, key: AggregateKey, seq: int) -> StoredRecord | None:
        """The record of ``key`` stored at ``seq``, or None if that sequence holds none of
        ``key``'s records.

        Raises:
            TenantAccessDeniedError, CorruptDataError, BackendUnavailableError: as ``read``.
        """
        ...


class SnapshotStore(Protocol):
    """Latest snapshot per aggregate; an optimisation that never changes an answer (§5)."""

    async def load(self, key: AggregateKey) -> Snapshot | None:
        """The latest snapshot of ``key``, or None.

        A snapshot that cannot be decoded is reported as None and logged: snapshots are only
        an optimisation, the events are the truth.
        """
        ...

    async def save(self, snapshot: Snapshot) -> bool:
        """Store ``snapshot`` unless one with an equal or newer version is stored.
        Returns whether it was written."""
        ...


class SnapshotSink(Protocol):
    """Where the handler hands aggregates due for a snapshot (the snapshotter, §5)."""

    def offer(self, snapshot: Snapshot) -> None:
        """Take a snapshot to write later. Never blocks; callable from any thread."""
        ...


class TenantGate(Protocol):
    """Admission of commands per tenant (hosted / accepting / draining, §6)."""

    def admit(self, tenant_id: str) -> AbstractContextManager[None]:
        """Count one command in flight for ``tenant_id`` while the context is open.

        Raises:
            TenantUnavailableError: the tenant is not hosted here or is draining.
            TenantAccessDeniedError: the tenant is not allowed on this node.
        """
        ...


class ChangeSink(Protocol):
    """Where the handler reports its appends, for the read side (index, watch; DESIGN §10).

    Every append is bracketed: ``append_started`` before the publish, ``append_ended`` after
    it, whatever happened; a message known to be stored (and ours) is ``offer``-ed before its
    bracket ends. An append that ends ``uncertain`` may or may not have stored a message
    (lost acknowledgement, cancellation, a conflict answer to a retried publish): readers
    must find out from the stream. All three are called on the handler's thread (the asyncio
    island), never block and never raise.
    """

    def append_started(self, tenant_id: str) -> int:
        """An append for ``tenant_id`` is about to be sent. Returns its ticket."""
        ...

    def offer(self, change: CommittedChange) -> None:
        """A message of ours that is stored in the stream."""
        ...

    def append_ended(self, ticket: int, *, uncertain: bool) -> None:
        """The append of ``ticket`` is over. ``uncertain``: it may have stored a message
        that was not offered."""
        ...


@dataclass(frozen=True, slots=True)
class StreamPage:
    """One page of the stream read in order: the records, how many messages were skipped
    as unreadable (logged by the reader), and where the next page starts."""

    records: list[StoredRecord]
    skipped: int
    next_seq: int
    done: bool


class StreamReader(Protocol):
    """Reads the whole stream, or one tenant's part of it, in position order, without a
    consumer per read (batch direct get on JetStream). The read side's rebuilds use it."""

    async def stream_end(self) -> int:
        """The stream's last sequence (0: empty).

        Raises:
            BackendUnavailableError: the store cannot be reached.
        """
        ...

    async def read_page(self, tenant_id: str | None, *, after_seq: int, limit: int) -> StreamPage:
        """Up to ``limit`` records after ``after_seq`` of ``tenant_id`` (None: every
        tenant), in position order. A message that cannot be decoded under its subject is
        skipped and counted, never returned.

        Raises:
            BackendUnavailableError: the store cannot be reached.
        """
        ...
