"""``ChangeSource`` over the in-memory event store (tests: a watch resuming "from the
stream" reads the store's messages)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from aggregate.domain.changes import key_of_subject
from aggregate.domain.envelopes import CommandRecord, StoredRecord
from aggregate.domain.errors import CorruptDataError

if TYPE_CHECKING:
    from aggregate.testing.memory_store import InMemoryEventStore
    from aggregate.watch.changes import WatchSubset


class MemoryChangeSource:
    """Reads the subset's messages of an ``InMemoryEventStore`` after a position."""

    def __init__(self, store: InMemoryEventStore) -> None:
        self.store = store

    async def read_after(
        self, subset: WatchSubset, after: int, limit: int
    ) -> tuple[list[StoredRecord], bool]:
        await anyio.lowlevel.checkpoint()
        matching = []
        for message in self.store.messages:
            if message.seq <= after:
                continue
            key = key_of_subject(message.subject)
            if key is None:
                raise CorruptDataError(f"malformed subject {message.subject!r}")
            if key.tenant_id != subset.tenant_id:
                continue
            if subset.aggregate_type and key.aggregate_type != subset.aggregate_type:
                continue
            if subset.aggregate_id is not None and key.aggregate_id != subset.aggregate_id:
                continue
            matching.append((message, key))
        page = matching[:limit]
        records = [
            StoredRecord(m.seq, CommandRecord.decode(m.data, expected_key=key)) for m, key in page
        ]
        return records, len(matching) > limit
