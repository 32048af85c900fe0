"""The event and snapshot stores behind circuit breakers (DESIGN §13).

``BreakerEventStore`` and ``BreakerSnapshotStore`` wrap the ports, not the adapters'
insides: every call of the inner store goes through its breaker. The safety of a retry
never changes: a ``BackendUnavailableError`` from an append still means "may or may not
have been appended" (the breaker only counts it), and a refused call (``CircuitOpenError``)
attempted nothing.

Snapshots are an optimisation (the events are the truth), so an open snapshot breaker does
not fail commands: loads answer None (the aggregate is rebuilt from its events) and saves are
skipped (``False``) until the breaker lets a probe through again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aggregate.domain.errors import CircuitOpenError

if TYPE_CHECKING:
    from aggregate.application import ports
    from aggregate.application.breaker import CircuitBreaker
    from aggregate.domain.aggregate import Snapshot
    from aggregate.domain.context import RequestContext
    from aggregate.domain.envelopes import CommandRecord, StoredRecord
    from aggregate.domain.ids import AggregateKey

log = logging.getLogger(__name__)


class BreakerEventStore:
    """An ``EventStore`` whose calls pass ``breaker`` (implements ``ports.EventStore``)."""

    def __init__(self, inner: ports.EventStore, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    async def append(
        self, record: CommandRecord, *, expected_last_seq: int, context: RequestContext
    ) -> int:
        """As ``EventStore.append``.

        Raises:
            CircuitOpenError: the breaker is open; nothing was appended.
            (and whatever the inner store raises)
        """
        with self.breaker.guard():
            return await self.inner.append(
                record, expected_last_seq=expected_last_seq, context=context
            )

    async def read(self, key: AggregateKey, *, after_seq: int = 0) -> list[StoredRecord]:
        with self.breaker.guard():
            return await self.inner.read(key, after_seq=after_seq)

    async def read_at(self, key: AggregateKey, seq: int) -> StoredRecord | None:
        with self.breaker.guard():
            return await self.inner.read_at(key, seq)

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()


class BreakerSnapshotStore:
    """A ``SnapshotStore`` behind ``breaker``; skipped while it is open (see above)."""

    def __init__(self, inner: ports.SnapshotStore, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    async def load(self, key: AggregateKey) -> Snapshot | None:
        try:
            with self.breaker.guard():
                return await self.inner.load(key)
        except CircuitOpenError:
            return None

    async def save(self, snapshot: Snapshot) -> bool:
        """As ``SnapshotStore.save``; False (not written) while the breaker is open.

        Raises:
            BackendUnavailableError, InvalidArgumentError: from the inner store.
        """
        try:
            with self.breaker.guard():
                return await self.inner.save(snapshot)
        except CircuitOpenError:
            return False


if TYPE_CHECKING:
    _event_store: type[ports.EventStore] = BreakerEventStore
    _snapshot_store: type[ports.SnapshotStore] = BreakerSnapshotStore
