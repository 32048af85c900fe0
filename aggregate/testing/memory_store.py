"""An in-memory event store with exactly the semantics DESIGN §4 gives JetStream.

One global sequence over all subjects; an append is one message holding every event of a
command (atomic by construction), conditional on the subject's last sequence; the expected
sequence is checked *before* message-id de-duplication, as JetStream does, so a retried
publish whose first attempt landed comes back as a conflict. Reads decode through the same
``CommandRecord.decode`` as the JetStream adapter, so tenant checks are identical.

Faults can be injected for tests: ``lose_next_ack`` stores the message but raises
``BackendUnavailableError`` as a lost acknowledgement would; ``fail_next_append`` raises
without storing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio.lowlevel

from aggregate.application.ports import StreamPage
from aggregate.domain.changes import key_of_subject
from aggregate.domain.envelopes import CommandRecord, StoredRecord
from aggregate.domain.errors import (
    BackendUnavailableError,
    CorruptDataError,
    DuplicateAppendError,
    TenantAccessDeniedError,
    VersionConflictError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from aggregate.domain.context import RequestContext
    from aggregate.domain.ids import AggregateKey


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as the store holds it: sequence, subject, body and headers."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]


@dataclass
class InMemoryEventStore:
    """The reference event store (also a fast fake for unit and property tests)."""

    duplicate_window_s: float = 120.0
    clock: Callable[[], float] = time.monotonic
    messages: list[StoredMessage] = field(default_factory=list)
    _last_by_subject: dict[str, int] = field(default_factory=dict)
    _msg_ids: dict[str, tuple[int, float]] = field(default_factory=dict)
    _lose_acks: int = 0
    _fail_appends: int = 0
    _conflict_acks: int = 0
    appends: int = 0

    def lose_next_ack(self, count: int = 1) -> None:
        """Store the next ``count`` appends but answer them with BackendUnavailableError."""
        self._lose_acks += count

    def conflict_next_ack(self, count: int = 1) -> None:
        """Store the next ``count`` appends but answer them with VersionConflictError, as a
        publish retried after a lost acknowledgement is answered by JetStream (§4.3)."""
        self._conflict_acks += count

    def fail_next_append(self, count: int = 1) -> None:
        """Fail the next ``count`` appends with BackendUnavailableError, storing nothing."""
        self._fail_appends += count

    @property
    def last_seq_overall(self) -> int:
        return self.messages[-1].seq if self.messages else 0

    def publish_raw(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None = None,
        *,
        expected_last_seq: int | None = None,
        msg_id: str | None = None,
        report_duplicate: bool = False,
    ) -> int:
        """Store a message as JetStream would, with its conditional and dedup rules: a
        message id seen within the duplicate window stores nothing and answers the earlier
        sequence (or raises, with ``report_duplicate``).

        Raises:
            VersionConflictError: ``expected_last_seq`` is given and stale.
            DuplicateAppendError: a duplicate, when ``report_duplicate``.
        """
        last = self._last_by_subject.get(subject, 0)
        if expected_last_seq is not None and expected_last_seq != last:
            raise VersionConflictError(
                f"wrong last sequence for {subject}: expected {expected_last_seq}, is {last}",
                expected=expected_last_seq,
                actual=last,
            )
        now = self.clock()
        if msg_id is not None:
            seen = self._msg_ids.get(msg_id)
            if seen is not None and now - seen[1] <= self.duplicate_window_s:
                if report_duplicate:
                    raise DuplicateAppendError(
                        f"message {msg_id} is already stored at seq {seen[0]}", seq=seen[0]
                    )
                return seen[0]
        seq = self.last_seq_overall + 1
        self.messages.append(StoredMessage(seq, subject, data, dict(headers or {})))
        self._last_by_subject[subject] = seq
        if msg_id is not None:
            self._msg_ids[msg_id] = (seq, now)
        return seq

    async def append(
        self, record: CommandRecord, *, expected_last_seq: int, context: RequestContext
    ) -> int:
        """See ``EventStore.append``."""
        await anyio.lowlevel.checkpoint()
        if self._fail_appends:
            self._fail_appends -= 1
            raise BackendUnavailableError("injected fault: append failed, nothing stored")
        self.appends += 1
        headers = record.headers(expected_last_seq=expected_last_seq, context=context)
        seq = self.publish_raw(
            record.key.subject,
            record.encode(),
            headers,
            expected_last_seq=expected_last_seq,
            msg_id=record.message_id,
            report_duplicate=True,
        )
        await anyio.lowlevel.checkpoint()
        if self._conflict_acks:
            self._conflict_acks -= 1
            raise VersionConflictError(
                "injected fault: retried publish answered with a wrong-last-sequence conflict",
                expected=expected_last_seq,
                actual=seq,
            )
        if self._lose_acks:
            self._lose_acks -= 1
            raise BackendUnavailableError(
                "injected fault: acknowledgement lost; the append may or may not have happened"
            )
        return seq

    async def read(self, key: AggregateKey, *, after_seq: int = 0) -> list[StoredRecord]:
        """See ``EventStore.read``."""
        await anyio.lowlevel.checkpoint()
        subject = key.subject
        return [
            StoredRecord(m.seq, CommandRecord.decode(m.data, expected_key=key))
            for m in self.messages
            if m.seq > after_seq and m.subject == subject
        ]

    async def read_at(self, key: AggregateKey, seq: int) -> StoredRecord | None:
        """See ``EventStore.read_at``."""
        await anyio.lowlevel.checkpoint()
        if not 1 <= seq <= len(self.messages):
            return None
        message = self.messages[seq - 1]
        if message.subject != key.subject:
            return None
        return StoredRecord(seq, CommandRecord.decode(message.data, expected_key=key))

    async def stream_end(self) -> int:
        """See ``StreamReader.stream_end``."""
        await anyio.lowlevel.checkpoint()
        return self.last_seq_overall

    async def read_page(self, tenant_id: str | None, *, after_seq: int, limit: int) -> StreamPage:
        """See ``StreamReader.read_page`` (the in-memory store is its own stream reader)."""
        await anyio.lowlevel.checkpoint()
        prefix = f"tenant.{tenant_id}." if tenant_id is not None else "tenant."
        matching = [m for m in self.messages if m.seq > after_seq and m.subject.startswith(prefix)]
        page = matching[:limit]
        records, skipped = [], 0
        for message in page:
            key = key_of_subject(message.subject)
            try:
                if key is None:
                    raise CorruptDataError("not an aggregate's subject")
                records.append(
                    StoredRecord(message.seq, CommandRecord.decode(message.data, expected_key=key))
                )
            except (CorruptDataError, TenantAccessDeniedError):
                skipped += 1
        next_seq = page[-1].seq if page else after_seq
        return StreamPage(records, skipped, next_seq, len(matching) <= limit)

    def subjects(self) -> set[str]:
        return set(self._last_by_subject)
