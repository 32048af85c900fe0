"""``StreamReader`` on JetStream: the stream (or one tenant's subjects) in position order,
with batch direct get and a wildcard ``next_by_subj`` (DESIGN §4.5), so a rebuild of the
read side creates no consumer: one request per page of up to ``limit`` messages.

Servers without batch direct get answer one message per request; the reader then pages
one message at a time (slow, but correct).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors

from aggregate.adapters.jetstream.direct_get import DirectGetClient
from aggregate.application.ports import StreamPage
from aggregate.domain.changes import key_of_subject
from aggregate.domain.envelopes import CommandRecord, StoredRecord
from aggregate.domain.errors import (
    BackendUnavailableError,
    CorruptDataError,
    TenantAccessDeniedError,
)

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from aggregate.adapters.jetstream.direct_get import DirectMessage

log = logging.getLogger(__name__)


class JetStreamStreamReader:
    """Reads the event stream ``stream`` over ``nc`` (on the connection's loop)."""

    def __init__(self, nc: NATS, *, stream: str, request_timeout_s: float = 5.0) -> None:
        self._js = nc.jetstream(timeout=request_timeout_s)
        self._stream = stream
        self._direct = DirectGetClient(nc, stream, timeout_s=request_timeout_s)

    async def stream_end(self) -> int:
        """See ``StreamReader.stream_end``: the stream's ``last_seq``."""
        try:
            info = await self._js.stream_info(self._stream)
        except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            raise BackendUnavailableError(
                f"cannot read the state of stream {self._stream!r}: {exc!r}"
            ) from exc
        return int(info.state.last_seq or 0)

    async def read_page(self, tenant_id: str | None, *, after_seq: int, limit: int) -> StreamPage:
        """See ``StreamReader.read_page``: one batch direct get on
        ``tenant.<tenant>.aggregate.>`` (every tenant: ``tenant.*.aggregate.>``)."""
        subjects = f"tenant.{tenant_id or '*'}.aggregate.>"
        start = after_seq + 1
        if self._direct.batch_supported is False:
            single = await self._direct.get_next(subjects, start)
            messages = [single] if single is not None else []
            done = single is None
        else:
            page = await self._direct.get_batch(subjects, start, limit)
            messages = page.messages
            done = not messages or (page.batched and page.num_pending <= 0)
        records: list[StoredRecord] = []
        skipped = 0
        next_seq = after_seq
        for message in messages:
            if message.seq <= next_seq:
                raise CorruptDataError(
                    f"direct get on {subjects} from seq {start} answered seq {message.seq} "
                    "out of order"
                )
            next_seq = message.seq
            record = _decode(message, tenant_id)
            if record is None:
                skipped += 1
            else:
                records.append(record)
        return StreamPage(records, skipped, next_seq, done)

    async def aclose(self) -> None:
        await self._direct.aclose()


def _decode(message: DirectMessage, tenant_id: str | None) -> StoredRecord | None:
    key = key_of_subject(message.subject)
    if key is None or (tenant_id is not None and key.tenant_id != tenant_id):
        log.warning("skipping stream message %d: subject is not an aggregate's", message.seq)
        return None
    try:
        return StoredRecord(message.seq, CommandRecord.decode(message.data, expected_key=key))
    except (CorruptDataError, TenantAccessDeniedError) as exc:
        log.warning("skipping stream message %d of %s: %s", message.seq, key, exc)
        return None
