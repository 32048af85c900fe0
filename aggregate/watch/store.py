"""``WatchedStore``: an ``EventStore`` that tells the watch hub about every append in flight.

It takes a ticket before each append is sent and reports how it ended: stored (at which
position), certainly not stored (a conflict on the first send), or unknown (timeout,
disconnect, cancellation, a retry answered as a conflict or duplicate). The hub needs this
to release changes in position order (``aggregate.watch.order``). Reads pass through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aggregate.domain.errors import VersionConflictError

if TYPE_CHECKING:
    from aggregate.application.ports import EventStore
    from aggregate.domain.context import RequestContext
    from aggregate.domain.envelopes import CommandRecord, StoredRecord
    from aggregate.domain.ids import AggregateKey
    from aggregate.watch.hub import WatchHub

_RETRIED = "(a retry"
"""The JetStream store's conflict message when a retried publish may have landed."""


class WatchedStore:
    """``EventStore`` over ``inner`` that reports each append to ``hub``."""

    def __init__(self, inner: EventStore, hub: WatchHub) -> None:
        self.inner = inner
        self.hub = hub

    async def append(
        self, record: CommandRecord, *, expected_last_seq: int, context: RequestContext
    ) -> int:
        """See ``EventStore.append``."""
        ticket = self.hub.begin()
        try:
            seq = await self.inner.append(
                record, expected_last_seq=expected_last_seq, context=context
            )
        except VersionConflictError as exc:
            if _RETRIED in exc.message:
                self.hub.unknown(ticket, record.key.tenant_id)
            else:
                self.hub.not_stored(ticket)
            raise
        except BaseException:
            self.hub.unknown(ticket, record.key.tenant_id)
            raise
        self.hub.stored(ticket, seq, record)
        return seq

    async def read(self, key: AggregateKey, *, after_seq: int = 0) -> list[StoredRecord]:
        return await self.inner.read(key, after_seq=after_seq)

    async def read_at(self, key: AggregateKey, seq: int) -> StoredRecord | None:
        return await self.inner.read_at(key, seq)
