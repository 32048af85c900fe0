"""The JetStream event store: ``EventStore`` on one stream, one subject per aggregate.

Appends (DESIGN §4.2, §4.3): one message per command on ``AggregateKey.subject``, its body
``CommandRecord.encode()``, published with ``Nats-Expected-Last-Subject-Sequence`` so a
stale writer gets ``VersionConflictError`` (JetStream 10071, 10164 in batches) instead of
forking the history, and ``Nats-Msg-Id`` = the command id scoped by the subject
(``CommandRecord.message_id``) so a retried publish is de-duplicated within the stream's
duplicate window while no other aggregate or tenant can collide with it. A publish that
times out or hits a disconnect is retried with exactly the same headers; because JetStream
checks the expected sequence before duplicates, a retry whose first attempt had landed
answers a conflict, which the command handler resolves from the aggregate's history.

Reads (§4.5) use direct get only, batched, so the command path never creates consumers.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import anyio
import nats.errors
import nats.js.errors

from aggregate.adapters.jetstream.direct_get import DirectGetClient
from aggregate.adapters.jetstream.errors import (
    FATAL_CONNECTION_ERRORS,
    TRANSIENT_ERRORS,
    conflict_actual_seq,
    is_conflict,
)
from aggregate.adapters.jetstream.publisher import AckedPublisher
from aggregate.adapters.jetstream.stream import DEFAULT_STREAM_NAME
from aggregate.domain.envelopes import CommandRecord, StoredRecord
from aggregate.domain.errors import (
    BackendUnavailableError,
    CorruptDataError,
    DuplicateAppendError,
    ResourceExhaustedError,
    VersionConflictError,
)

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from aggregate.domain.context import RequestContext
    from aggregate.domain.ids import AggregateKey


def append_headers(
    record: CommandRecord, *, expected_last_seq: int, context: RequestContext
) -> dict[str, str]:
    """The headers of the message that stores ``record`` (``CommandRecord.headers``)."""
    return record.headers(expected_last_seq=expected_last_seq, context=context)


class JetStreamEventStore:
    """``EventStore`` on a JetStream stream (created and validated by ``ensure_stream``).

    Args:
        nc: a connected nats-py client; the store never closes it.
        stream: the stream's name.
        request_timeout_s: how long one publish or one direct get may take.
        publish_attempts: how many times an append is sent (same message id) when the
            publish times out or the connection drops; at least 1.
        retry_backoff_s: the first pause between attempts; doubled each time, with jitter.
        read_batch_size: messages asked for per batch direct get request.
        use_batch_get: False forces the per-message direct get fallback (benchmarks, tests).
    """

    def __init__(
        self,
        nc: NATS,
        *,
        stream: str = DEFAULT_STREAM_NAME,
        request_timeout_s: float = 5.0,
        publish_attempts: int = 3,
        retry_backoff_s: float = 0.1,
        read_batch_size: int = 1000,
        use_batch_get: bool = True,
    ) -> None:
        if publish_attempts < 1:
            raise ValueError("publish_attempts must be at least 1")
        if read_batch_size < 1:
            raise ValueError("read_batch_size must be at least 1")
        self._nc = nc
        self._js = nc.jetstream(timeout=request_timeout_s)
        self._stream = stream
        self._timeout_s = request_timeout_s
        self._attempts = publish_attempts
        self._backoff_s = retry_backoff_s
        self._batch_size = read_batch_size
        self._use_batch = use_batch_get
        self._direct = DirectGetClient(nc, stream, timeout_s=request_timeout_s)
        self._publisher = AckedPublisher(nc)

    @property
    def stream(self) -> str:
        return self._stream

    async def append(
        self, record: CommandRecord, *, expected_last_seq: int, context: RequestContext
    ) -> int:
        """See ``EventStore.append``.

        A message id already stored within the duplicate window is answered by JetStream
        as a duplicate rather than stored again; this raises ``DuplicateAppendError`` with
        the earlier message's sequence.

        Raises:
            VersionConflictError: the aggregate's last sequence is not ``expected_last_seq``.
            BackendUnavailableError: no attempt was acknowledged; the append may or may not
                have happened.
            ResourceExhaustedError: the message exceeds the server's maximum payload.

        Cancellation: the append may or may not have happened.
        """
        subject = record.key.subject
        payload = record.encode()
        headers = append_headers(record, expected_last_seq=expected_last_seq, context=context)
        failures: list[str] = []
        delay = self._backoff_s
        for attempt in range(1, self._attempts + 1):
            try:
                ack = await self._publisher.publish(
                    subject, payload, headers=headers, ack_wait_s=self._timeout_s
                )
            except nats.js.errors.APIError as exc:
                if is_conflict(exc):
                    actual = conflict_actual_seq(exc)
                    retried = " (a retry: the first attempt may have landed)" if attempt > 1 else ""
                    raise VersionConflictError(
                        f"{record.key}: expected last sequence {expected_last_seq}, "
                        f"stream has {actual if actual is not None else 'another'}{retried}",
                        expected=expected_last_seq,
                        actual=actual,
                    ) from None
                if not isinstance(exc, TRANSIENT_ERRORS):
                    outcome = (
                        "nothing was stored"
                        if attempt == 1
                        else "an earlier attempt may or may not have been appended"
                    )
                    raise BackendUnavailableError(
                        f"JetStream refused the append of {record.key}: {exc.description} "
                        f"(err_code {exc.err_code}); {outcome}"
                    ) from exc
                failures.append(f"attempt {attempt}: {exc!r}")
            except nats.errors.MaxPayloadError:
                raise ResourceExhaustedError(
                    f"command {record.command_id} of {record.key} encodes to {len(payload)} "
                    f"bytes, above the NATS server's max_payload"
                ) from None
            except FATAL_CONNECTION_ERRORS as exc:
                raise BackendUnavailableError(
                    f"NATS connection unusable while appending to {record.key}: {exc!r}; the "
                    f"append may or may not have happened"
                ) from exc
            except TRANSIENT_ERRORS as exc:
                failures.append(f"attempt {attempt}: {exc!r}")
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                raise BackendUnavailableError(
                    f"append to {record.key} failed: {exc!r}; it may or may not have happened"
                ) from exc
            else:
                if ack.duplicate:
                    await self._explain_duplicate(record, ack.seq, expected_last_seq)
                return ack.seq
            if attempt < self._attempts:
                await anyio.sleep(delay * (0.5 + random.random()))
                delay *= 2
        raise BackendUnavailableError(
            f"append to {record.key} not acknowledged after {self._attempts} attempts "
            f"({'; '.join(failures)}); it may or may not have been appended"
        )

    async def _explain_duplicate(self, record: CommandRecord, seq: int, expected: int) -> None:
        # Read from the stream leader (not direct get): a follower may not hold ``seq`` yet.
        try:
            stored = await self._js.get_msg(self._stream, seq)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise BackendUnavailableError(
                f"command {record.command_id} was de-duplicated against seq {seq}, which "
                f"could not be read: {exc!r}"
            ) from exc
        if stored.subject == record.key.subject:
            raise DuplicateAppendError(
                f"{record.key}: message {record.message_id} is already stored at seq {seq} "
                "(within the stream's duplicate window)",
                seq=seq,
            )
        raise CorruptDataError(
            f"message id {record.message_id} was de-duplicated against seq {seq} on subject "
            f"{stored.subject}: message ids are scoped by subject, so this cannot happen"
        )

    async def read(self, key: AggregateKey, *, after_seq: int = 0) -> list[StoredRecord]:
        """See ``EventStore.read``. One batch direct get per ``read_batch_size`` messages.

        Cancellation: nothing to undo; late replies are dropped.
        """
        messages = await self._direct.read_subject(
            key.subject, after_seq + 1, batch_size=self._batch_size, use_batch=self._use_batch
        )
        return [
            StoredRecord(m.seq, CommandRecord.decode(m.data, expected_key=key)) for m in messages
        ]

    async def read_at(self, key: AggregateKey, seq: int) -> StoredRecord | None:
        """See ``EventStore.read_at``: a direct get by sequence, None if it is not ``key``'s.

        Cancellation: nothing to undo.
        """
        message = await self._direct.get_seq(seq)
        if message is None or message.subject != key.subject:
            return None
        return StoredRecord(message.seq, CommandRecord.decode(message.data, expected_key=key))

    async def last_seq(self, key: AggregateKey) -> int:
        """The stream sequence of ``key``'s last message, 0 when it has none.

        Raises:
            BackendUnavailableError: the store cannot be reached.

        Cancellation: nothing to undo.
        """
        message = await self._direct.get_last(key.subject)
        return message.seq if message is not None else 0

    @property
    def batch_get_supported(self) -> bool | None:
        """Whether the server answered batch direct gets (None until the first read)."""
        return self._direct.batch_supported

    async def aclose(self) -> None:
        """Release the store's reply subscriptions; the connection stays open."""
        await self._publisher.aclose()
        await self._direct.aclose()
