"""``ChangeSource`` on the event stream: a tenant's messages from a position, by batch
direct get on a wildcard subject (``tenant.<t>.aggregate.>``), without consumers."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from aggregate.adapters.jetstream.direct_get import DirectGetClient
from aggregate.domain.envelopes import CommandRecord, StoredRecord
from aggregate.domain.errors import CorruptDataError
from aggregate.domain.ids import AggregateKey

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from aggregate.watch.changes import WatchSubset


def subject_filter(subset: WatchSubset) -> str:
    """The subjects of the messages a watch of ``subset`` reads."""
    base = f"tenant.{subset.tenant_id}.aggregate"
    kind = subset.aggregate_type or "*"
    if subset.aggregate_id is not None:
        return f"{base}.{kind}.{subset.aggregate_id}"
    return f"{base}.{kind}.*" if subset.aggregate_type else f"{base}.>"


def key_of_subject(subject: str) -> AggregateKey:
    """The aggregate of a stored message's subject.

    Raises:
        CorruptDataError: the subject is not ``tenant.<t>.aggregate.<type>.<uuid>``.
    """
    parts = subject.split(".")
    try:
        if len(parts) != 5 or parts[0] != "tenant" or parts[2] != "aggregate":
            raise ValueError(subject)
        return AggregateKey(parts[1], parts[3], uuid.UUID(parts[4]))
    except ValueError:
        clipped = subject[:200]
        raise CorruptDataError(f"a stored message has the malformed subject {clipped!r}") from None


class StreamChangeReader:
    """Reads watched subjects of one stream over one NATS connection (its own reply inbox)."""

    def __init__(self, nc: NATS, stream: str, *, timeout_s: float) -> None:
        self._direct = DirectGetClient(nc, stream, timeout_s=timeout_s)

    async def read_after(
        self, subset: WatchSubset, after: int, limit: int
    ) -> tuple[list[StoredRecord], bool]:
        """See ``ChangeSource.read_after``. Cancellation: nothing to undo."""
        page = await self._direct.get_batch(subject_filter(subset), after + 1, limit)
        records = []
        previous = after
        for message in page.messages:
            if message.seq <= previous:
                raise CorruptDataError(
                    f"direct get returned seq {message.seq} after {previous}: out of order"
                )
            previous = message.seq
            key = key_of_subject(message.subject)
            records.append(
                StoredRecord(message.seq, CommandRecord.decode(message.data, expected_key=key))
            )
        more = page.num_pending > 0 if page.batched else bool(page.messages)
        return records, more

    async def aclose(self) -> None:
        await self._direct.aclose()
