"""``open_connection`` against a real nats-server: a cancellation while connecting ends the
connect, even when nats-py's handshake lets it slip."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import pytest
from nats.aio.client import Client

from aggregate.adapters.jetstream.connect import open_connection

if TYPE_CHECKING:
    from aggregate.adapters.nats_server import NatsServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_cancellation_that_the_handshake_drops_still_stops_the_connect(
    shared_nats_server: NatsServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_connect = Client.connect
    clients: list[Client] = []

    async def connect_dropping_a_cancel(self: Client, *args: Any, **kwargs: Any) -> None:
        # What Python 3.11's asyncio.wait_for does when the cancellation arrives as the
        # server's answer does: the handshake completes, the CancelledError is swallowed,
        # the task stays marked as cancelled.
        clients.append(self)
        await real_connect(self, *args, **kwargs)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)

    monkeypatch.setattr(Client, "connect", connect_dropping_a_cancel)

    async def connect() -> Client:
        return await open_connection([shared_nats_server.url], timeout_s=10, name="cancelled")

    task = asyncio.get_running_loop().create_task(connect())
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    assert task.cancelled()
    (client,) = clients
    assert client.is_closed  # the half-open client is closed, not left connected


async def test_a_connect_that_is_not_cancelled_returns_the_connected_client(
    shared_nats_server: NatsServerProcess,
) -> None:
    nc = await open_connection([shared_nats_server.url], timeout_s=10, name="plain")
    try:
        assert nc.is_connected
    finally:
        await nc.close()
