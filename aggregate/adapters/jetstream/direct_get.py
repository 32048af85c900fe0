"""Direct get, single and batched, without consumers (DESIGN §4.5).

nats-py has no helper for batch direct get, so this module speaks the protocol (ADR-31)
itself: a request to ``$JS.API.DIRECT.GET.<stream>`` with
``{"seq": start, "next_by_subj": subject, "batch": n}`` is answered by up to ``n``
messages (the stream sequence in ``Nats-Sequence``, the subject in ``Nats-Subject``,
``Nats-Num-Pending`` counting the matching messages still after it) and then an empty
``204 EOB`` message; ``404`` means nothing matched. A server without batch support answers
one message without ``Nats-Num-Pending``; the reader then falls back to one request per
message. Single gets (by sequence, last by subject) are answered by one message or a status.

All replies arrive on one long-lived wildcard inbox subscription per client, routed to the
waiting request by the last token of the reply subject, so a read costs one request and no
SUB/UNSUB round trips. Replies to abandoned requests (timed out, cancelled) are dropped.

Direct gets may be answered by any replica of an R3 stream, so a read right after an
acknowledged append can miss it on a lagging follower (ADR-31: no read-after-write
coherency); the conditional append makes such a stale read harmless (a conflict, then a
re-read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import nats.errors
from nats.js.api import Header

from aggregate.adapters.jetstream import headers as header_parsing
from aggregate.adapters.jetstream.inbox import ReplyInbox
from aggregate.domain.errors import AggregateError, BackendUnavailableError, CorruptDataError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg

_NUM_PENDING = "Nats-Num-Pending"
_STATUS = Header.STATUS.value
BATCH_MAX_BYTES = 8 * 1024 * 1024
"""Bytes per batch answer: the server ends a batch early past it (EOB with messages still
pending, so the reader asks for the next page), which keeps one answer well inside the
reply subscription's pending limits whatever the size of the messages."""


@dataclass(frozen=True, slots=True)
class DirectMessage:
    """One stored message as direct get returns it."""

    seq: int
    subject: str
    data: bytes
    headers: Mapping[str, str]


@dataclass
class _Reply:
    """Collects the replies of one request until it is complete."""

    batch: bool
    done: anyio.Event = field(default_factory=anyio.Event)
    messages: list[DirectMessage] = field(default_factory=list)
    status: str | None = None
    description: str = ""
    num_pending: int = 0
    batched: bool = False
    malformed: str | None = None

    def feed(self, msg: Msg) -> None:
        if self.done.is_set():
            return
        headers = msg.headers or {}
        status = headers.get(_STATUS)
        if status:
            self.status = status
            self.description = str(headers.get(Header.DESCRIPTION, ""))
            if status == "204":
                self.num_pending = _int_header(headers, _NUM_PENDING, 0)
            self.done.set()
            return
        try:
            message = DirectMessage(
                seq=int(headers["Nats-Sequence"]),
                subject=headers["Nats-Subject"],
                data=msg.data,
                headers=headers,
            )
        except (KeyError, ValueError) as exc:
            self.malformed = f"direct get reply without a valid {exc} header"
            self.done.set()
            return
        self.messages.append(message)
        if _NUM_PENDING in headers:
            self.batched = True
            self.num_pending = _int_header(headers, _NUM_PENDING, 0)
        if not (self.batch and self.batched):
            # A single get, or a server that ignored "batch": nothing else follows.
            self.done.set()


def _int_header(headers: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(headers[name])
    except (KeyError, ValueError):
        return default


@dataclass(frozen=True, slots=True)
class BatchPage:
    """One batch direct get answer: the messages and how many matching ones remain."""

    messages: list[DirectMessage]
    num_pending: int
    batched: bool


class DirectGetClient:
    """Direct gets on one stream over one NATS connection (on the connection's loop).

    ``batch_supported`` starts unknown and is learned from the first batch answer.

    Every request method raises what ``_request`` raises (``BackendUnavailableError``,
    ``CorruptDataError``, ``AggregateError``); on cancellation the request is abandoned
    and its late replies are dropped.
    """

    def __init__(
        self,
        nc: NATS,
        stream: str,
        *,
        timeout_s: float = 5.0,
        batch_max_bytes: int = BATCH_MAX_BYTES,
    ) -> None:
        header_parsing.install(nc)  # replies carry a stored message's ~19 headers each
        self._nc = nc
        self._stream = stream
        self._api = f"$JS.API.DIRECT.GET.{stream}"
        self._timeout_s = timeout_s
        self._batch_max_bytes = batch_max_bytes
        self._inbox = ReplyInbox(nc, self._on_reply)
        self._waiting: dict[str, _Reply] = {}
        self.batch_supported: bool | None = None

    def _on_reply(self, token: str, msg: Msg) -> None:
        waiting = self._waiting.get(token)
        if waiting is not None:
            waiting.feed(msg)

    async def _request(self, subject: str, payload: bytes, *, batch: bool) -> _Reply:
        """Send one request and wait for its complete answer.

        Raises:
            BackendUnavailableError: NATS is closed, nothing answers, or the answer did not
                complete within the timeout.
            CorruptDataError: a reply lacks its sequence or subject header.
            AggregateError: the server refused the request (a status other than 404/503).

        Cancellation: the request is abandoned; late replies are dropped.
        """
        try:
            token, reply_subject = await self._inbox.reply_subject()
            reply = _Reply(batch=batch)
            self._waiting[token] = reply
            try:
                await self._nc.publish(subject, payload, reply=reply_subject)
                with anyio.move_on_after(self._timeout_s):
                    await reply.done.wait()
            finally:
                del self._waiting[token]
        except nats.errors.Error as exc:
            raise BackendUnavailableError(
                f"direct get on stream {self._stream!r} failed: {exc!r}"
            ) from exc
        if not reply.done.is_set():
            raise BackendUnavailableError(
                f"direct get on stream {self._stream!r} got no complete answer within "
                f"{self._timeout_s}s (NATS disconnected or JetStream unavailable)"
            )
        if reply.malformed:
            raise CorruptDataError(f"stream {self._stream!r}: {reply.malformed}")
        if reply.status in (None, "204", "404"):
            return reply
        if reply.status == "503":
            raise BackendUnavailableError(
                f"no JetStream responder for direct get on stream {self._stream!r}: the "
                f"stream is missing, has allow_direct=false, or JetStream is not ready"
            )
        raise AggregateError(
            f"direct get on stream {self._stream!r} refused: {reply.status} "
            f"{reply.description}".rstrip()
        )

    async def get_batch(self, subject: str, start_seq: int, batch: int) -> BatchPage:
        """Up to ``batch`` messages of ``subject`` at or after ``start_seq``, in order."""
        body = {
            "seq": max(start_seq, 1),
            "next_by_subj": subject,
            "batch": batch,
            "max_bytes": self._batch_max_bytes,
        }
        reply = await self._request(self._api, json.dumps(body).encode(), batch=True)
        if reply.messages and self.batch_supported is None:
            self.batch_supported = reply.batched
        return BatchPage(reply.messages, reply.num_pending, reply.batched)

    async def get_next(self, subject: str, start_seq: int) -> DirectMessage | None:
        """The first message of ``subject`` at or after ``start_seq``, or None."""
        body = {"seq": max(start_seq, 1), "next_by_subj": subject}
        reply = await self._request(self._api, json.dumps(body).encode(), batch=False)
        return reply.messages[0] if reply.messages else None

    async def get_seq(self, seq: int) -> DirectMessage | None:
        """The message stored at ``seq`` (any subject), or None."""
        if seq < 1:
            return None
        reply = await self._request(self._api, json.dumps({"seq": seq}).encode(), batch=False)
        return reply.messages[0] if reply.messages else None

    async def get_last(self, subject: str) -> DirectMessage | None:
        """The last message of ``subject``, or None (the subject-appended form, no body)."""
        reply = await self._request(f"{self._api}.{subject}", b"", batch=False)
        return reply.messages[0] if reply.messages else None

    async def read_subject(
        self, subject: str, start_seq: int, *, batch_size: int = 1000, use_batch: bool = True
    ) -> list[DirectMessage]:
        """Every message of ``subject`` at or after ``start_seq``, in stream order.

        Pages through batch direct get (``batch_size`` per request); falls back to one
        request per message when the server lacks batch support or ``use_batch`` is false.

        Raises:
            BackendUnavailableError, CorruptDataError, AggregateError: as ``_request``.
        """
        out: list[DirectMessage] = []
        start = max(start_seq, 1)
        while use_batch and self.batch_supported is not False:
            page = await self.get_batch(subject, start, batch_size)
            _check_page(page.messages, subject, start)
            out.extend(page.messages)
            if not page.messages:
                return out
            start = page.messages[-1].seq + 1
            if not page.batched:
                break  # an old server answered one message: continue one by one
            if page.num_pending <= 0:
                return out
        while (message := await self.get_next(subject, start)) is not None:
            _check_page([message], subject, start)
            out.append(message)
            start = message.seq + 1
        return out

    async def aclose(self) -> None:
        """Drop the reply subscription (if the connection is still open)."""
        await self._inbox.aclose()


def _check_page(messages: list[DirectMessage], subject: str, start: int) -> None:
    previous = start - 1
    for message in messages:
        if message.subject != subject or message.seq <= previous:
            raise CorruptDataError(
                f"direct get for {subject} from seq {start} returned {message.subject} "
                f"at seq {message.seq} out of order"
            )
        previous = message.seq
