"""One long-lived wildcard inbox subscription whose replies go to the request they answer.

Requests sent with ``reply = <inbox>.<token>`` are answered on ``<inbox>.*``; the last token
names the request. Each request costs no SUB/UNSUB round trip. Used by direct gets and by
JetStream publishes awaiting their acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import TYPE_CHECKING

import nats.errors

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription


class ReplyInbox:
    """The subscription and the reply subjects of one client (on the connection's loop).

    ``on_reply(token, msg)`` is called for every reply; replies to tokens nobody waits for
    any more are the receiver's to drop.
    """

    def __init__(self, nc: NATS, on_reply: Callable[[str, Msg], None]) -> None:
        self._nc = nc
        self._on_reply = on_reply
        self._sub: Subscription | None = None
        self._prefix = ""
        self._tokens = itertools.count(1)
        # asyncio's lock binds to the running loop on first use; anyio's would bind to
        # whichever event loop constructed the client (maybe Trio's, in the service).
        self._sub_lock = asyncio.Lock()

    async def reply_subject(self) -> tuple[str, str]:
        """A new ``(token, reply subject)``; subscribes first if needed.

        Raises:
            nats.errors.Error: the subscription could not be made.
        """
        if self._sub is None:
            async with self._sub_lock:
                if self._sub is None:
                    prefix = self._nc.new_inbox()
                    self._sub = await self._nc.subscribe(f"{prefix}.*", cb=self._deliver)
                    self._prefix = prefix + "."
        token = str(next(self._tokens))
        return token, self._prefix + token

    async def _deliver(self, msg: Msg) -> None:
        self._on_reply(msg.subject[len(self._prefix) :], msg)

    async def aclose(self) -> None:
        """Drop the subscription (if the connection is still open)."""
        sub, self._sub = self._sub, None
        if sub is not None and not self._nc.is_closed:
            # The connection may have gone away meanwhile: then nothing is left to drop.
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
