"""Open a nats-py connection whose first connect is bounded by one deadline.

nats-py retries the first connect for as long as ``max_reconnect_attempts`` allows, and with
``-1`` (what a long-running service wants for *re*connects) or ``0`` it never gives up: its
server selection loop retries a refused or silent server every ``reconnect_time_wait``
forever, reporting each failure to ``error_cb``. ``open_connection`` puts the whole first
connect (every attempt, every server) under one deadline, keeps the per-attempt failures
out of the caller's callbacks (the caller gets one error naming the last cause), and
closes whatever a failed or cancelled attempt left open. After the first connect, the
caller's callbacks and reconnect policy apply unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.client import Client

from aggregate.adapters.jetstream import headers
from aggregate.config.values import redact_url_credentials
from aggregate.domain.errors import BackendUnavailableError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    ErrorCallback = Callable[[Exception], Awaitable[None]]
    Callback = Callable[[], Awaitable[None]]

log = logging.getLogger(__name__)

RETRY_WAIT_S = 0.5
"""Pause between attempts at the same server, for the first connect and reconnects."""
CLOSE_TIMEOUT_S = 1.0
"""How long closing a half-open client after a failed first connect may take."""


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | nats.errors.TimeoutError):
        return "no answer from the server"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]


async def open_connection(
    servers: Sequence[str],
    *,
    timeout_s: float,
    name: str | None = None,
    reconnect: bool = True,
    disconnected_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
    error_cb: ErrorCallback | None = None,
    setting: str = "AGGREGATE_NATS_CONNECT_TIMEOUT_MS",
    hint: str = "",
) -> Client:
    """Connect to one of ``servers`` within ``timeout_s`` seconds in all.

    Attempts are repeated (every server, ``RETRY_WAIT_S`` apart) until the deadline, so a
    server that is still starting is waited for. Once connected, a lost connection is
    re-established without limit when ``reconnect`` is true, and not at all otherwise; the
    callbacks see only what happens after the first connect. ``setting`` names the limit in
    the error message, ``hint`` (if any) ends it.

    Raises:
        BackendUnavailableError: no server accepted a connection within ``timeout_s``
            (the message names the servers, without credentials, and the last cause).

    Cancellation: the half-open client is closed before the cancellation propagates.
    """
    connecting = True
    last_error: list[BaseException] = []
    task = asyncio.current_task()
    cancels = task.cancelling() if task is not None else 0

    def dropped_cancel() -> bool:
        # Python 3.11's asyncio.wait_for drops a cancellation that arrives as its inner
        # wait completes: in nats-py's transport connect (the attempt's error is raised
        # instead, and nats-py tries again) and in its handshake (the connect returns). The
        # task stays marked as cancelled; honour that, or a service stopping during
        # start-up would go on connecting, or starting.
        return task is not None and task.cancelling() > cancels

    async def on_error(exc: Exception) -> None:
        if connecting:
            last_error[:] = [exc]
            log.debug("NATS connect attempt failed: %r", exc)
            if dropped_cancel():
                raise asyncio.CancelledError
        elif error_cb is not None:
            await error_cb(exc)

    async def on_disconnected() -> None:
        if not connecting and disconnected_cb is not None:
            await disconnected_cb()

    async def on_reconnected() -> None:
        if not connecting and reconnected_cb is not None:
            await reconnected_cb()

    nc = Client()
    headers.install(nc)
    connect: Any = nc.connect  # nats-py annotates its timeouts as int; they are floats
    try:
        async with asyncio.timeout(timeout_s):
            await connect(
                list(servers),
                name=name,
                connect_timeout=max(timeout_s, 0.001),
                allow_reconnect=reconnect,
                max_reconnect_attempts=-1,
                reconnect_time_wait=RETRY_WAIT_S,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                error_cb=on_error,
            )
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        await _close_quietly(nc)
        where = ", ".join(redact_url_credentials(s) for s in servers)
        cause = last_error[0] if last_error else exc
        raise BackendUnavailableError(
            f"cannot connect to NATS at {where} within {timeout_s:g} s ({setting}): "
            f"{_describe(cause)}{'; ' + hint if hint else ''}"
        ) from exc
    except BaseException:
        await _close_quietly(nc)
        raise
    if dropped_cancel():  # cancelled while connecting, and nats-py returned anyway
        await _close_quietly(nc)
        raise asyncio.CancelledError
    connecting = False
    return nc


async def _close_quietly(nc: Client) -> None:
    """Close a client whose first connect failed or was cancelled (shielded, bounded)."""
    if nc.is_closed:
        return
    closing = asyncio.ensure_future(nc.close())
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(closing), CLOSE_TIMEOUT_S)
