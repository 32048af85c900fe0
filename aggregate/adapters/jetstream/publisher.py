"""JetStream publishes awaiting their acknowledgement, on one reply subscription.

``JetStreamContext.publish`` (nats-py) sends each publish as a request: a response token, a
future, an ``asyncio.wait_for`` around it, then the acknowledgement decoded into a
``PubAck`` dataclass. On the command path that is a large share of the cost of an append.
``AckedPublisher`` keeps the same protocol and the same errors with less work per message:
one long-lived wildcard inbox subscription (``<inbox>.*``), a counter for the last token,
one timer per publish on the running loop, and the acknowledgement read as plain JSON.
``bench/publish_bench.py`` (64 concurrent lanes on a real nats-server) measures it at about
two thirds of nats-py's client CPU per conditional publish.

Errors are nats-py's own, exactly as ``JetStreamContext.publish`` raises them, so callers
translate them the same way: ``nats.js.errors.APIError`` (and its subclasses, through
``APIError.from_error``) for a refusal such as a wrong expected sequence,
``nats.js.errors.NoStreamResponseError`` when no stream takes the subject,
``nats.errors.TimeoutError`` when no acknowledgement arrives in time, and whatever
``Client.publish`` raises (closed connection, payload too large, ...).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.js.api import Header

from aggregate.adapters.jetstream.inbox import ReplyInbox

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg


@dataclass(frozen=True, slots=True)
class Ack:
    """A stored message's acknowledgement: its stream sequence, and whether JetStream
    answered it as a duplicate of an earlier message with the same ``Nats-Msg-Id``."""

    seq: int
    duplicate: bool = False


class MalformedAckError(nats.errors.Error):
    """The acknowledgement of a publish could not be read: whether the message was stored
    is unknown."""

    def __init__(self, detail: str) -> None:
        super().__init__()
        self.detail = detail

    def __str__(self) -> str:
        return f"nats: malformed JetStream acknowledgement: {self.detail}"


def parse_ack(data: bytes) -> Ack:
    """An acknowledgement's body as an ``Ack``.

    Raises:
        nats.js.errors.APIError: (or a subclass) the body is JetStream's refusal.
        MalformedAckError: the body is not an acknowledgement.
    """
    try:
        body: Any = json.loads(data)
    except ValueError as exc:
        raise MalformedAckError(f"not JSON ({exc}): {data[:200]!r}") from None
    if not isinstance(body, dict):
        raise MalformedAckError(f"not a JSON object: {data[:200]!r}")
    error = body.get("error")
    if error is not None:
        if not isinstance(error, dict) or "code" not in error:
            raise MalformedAckError(f"unreadable error: {data[:200]!r}")
        nats.js.errors.APIError.from_error(error)  # raises
    seq = body.get("seq")
    if type(seq) is not int or seq < 1:
        raise MalformedAckError(f"no valid sequence: {data[:200]!r}")
    return Ack(seq, body.get("duplicate") is True)


class AckedPublisher:
    """Publishes to JetStream and waits for each acknowledgement (on the loop of the
    connection; every method must be called there)."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._inbox = ReplyInbox(nc, self._on_reply)
        self._waiting: dict[str, asyncio.Future[Msg]] = {}

    @property
    def waiting(self) -> int:
        """Publishes sent and not yet acknowledged, failed or abandoned."""
        return len(self._waiting)

    def _on_reply(self, token: str, msg: Msg) -> None:
        waiter = self._waiting.get(token)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    async def publish(
        self, subject: str, payload: bytes, *, headers: dict[str, str], ack_wait_s: float
    ) -> Ack:
        """Publish one message and wait up to ``ack_wait_s`` seconds for its acknowledgement.

        Raises:
            nats.js.errors.APIError: JetStream refused the message (a subclass per code).
            nats.js.errors.NoStreamResponseError: no stream takes ``subject``.
            nats.errors.TimeoutError: no acknowledgement within ``ack_wait_s``; the message may
                or may not have been stored.
            MalformedAckError: the acknowledgement could not be read.
            nats.errors.Error: as ``nats.aio.client.Client.publish``.

        Cancellation: the publish may or may not have been stored; a late acknowledgement
        is dropped.
        """
        token, reply = await self._inbox.reply_subject()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = waiter
        timer = loop.call_later(ack_wait_s, _expire, waiter)
        try:
            await self._nc.publish(subject, payload, reply=reply, headers=headers)
            msg = await waiter
        finally:
            timer.cancel()
            del self._waiting[token]
        if not msg.data and msg.headers:
            status = msg.headers.get(Header.STATUS.value)
            if status == "503":
                raise nats.js.errors.NoStreamResponseError
            if status:
                description = msg.headers.get(Header.DESCRIPTION.value, "")
                raise MalformedAckError(f"status {status} {description}".rstrip())
        return parse_ack(msg.data)

    async def aclose(self) -> None:
        """Drop the reply subscription (if the connection is still open); publishes still
        waiting fail with ``nats.errors.TimeoutError`` when their time is up."""
        await self._inbox.aclose()


def _expire(waiter: asyncio.Future[Msg]) -> None:
    if not waiter.done():
        waiter.set_exception(nats.errors.TimeoutError())
