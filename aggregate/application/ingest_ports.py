"""The ports of usage ingestion: where per-source progress and the consumed-record index
live. The service implements them on NATS KV (``aggregate.ingest.kv``), tests in memory
(``aggregate.testing.memory_ingest``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aggregate.domain.errors import AggregateError

if TYPE_CHECKING:
    from aggregate.ingest.progress import ConsumedEntry, SourceProgress


class ProgressConflictError(AggregateError):
    """Raised by ``ProgressStore.save`` when another run stored the source's progress since
    it was loaded (the revision no longer matches)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to ``ConsumedIndex.claim``: the entry now in the index (ours, or the
    first one written for that idempotency key), and whether this call created it."""

    entry: ConsumedEntry
    created: bool
    revision: int


@dataclass(frozen=True, slots=True)
class ConsumedPage:
    """A page of the index, in the order entries were written: ``next_after`` is the
    position to pass as ``after`` for the next page (None: nothing more yet)."""

    entries: list[tuple[int, ConsumedEntry]]
    next_after: int | None


class ProgressStore(Protocol):
    """Per-source progress, shared by every node."""

    async def load(self, tenant_id: str, source: str) -> tuple[SourceProgress, int]:
        """The stored progress and its revision (a fresh progress and 0 when none).

        Raises:
            BackendUnavailableError: the store did not answer in time.
        """
        ...

    async def save(
        self, tenant_id: str, source: str, progress: SourceProgress, revision: int
    ) -> int:
        """Store ``progress`` if the stored revision is still ``revision``; the new revision.

        Raises:
            ProgressConflictError: another run stored progress meanwhile.
            BackendUnavailableError: the store did not answer in time.
        """
        ...

    async def delete(self, tenant_id: str, source: str) -> None:
        """Forget the source's progress (its next run reads it all again)."""
        ...


class ConsumedIndex(Protocol):
    """Every consumed usage record by idempotency key, per tenant (write-once entries)."""

    async def claim(self, tenant_id: str, entry: ConsumedEntry) -> Claim:
        """Create the entry of ``entry.idempotency_key`` unless one exists; either way
        answer the entry the index holds for that key.

        Raises:
            BackendUnavailableError: the index did not answer in time.
        """
        ...

    async def release(self, tenant_id: str, idempotency_key: str, revision: int) -> None:
        """Remove an entry this run created (its charge was refused), if unchanged."""
        ...

    async def get(self, tenant_id: str, idempotency_key: str) -> ConsumedEntry | None: ...

    async def page(
        self, tenant_id: str, *, after: int, limit: int, source: str | None
    ) -> ConsumedPage:
        """Up to ``limit`` entries written after position ``after`` (of ``source`` only,
        when given), looking at a bounded number of entries per call."""
        ...
