"""``open_connection`` against a real nats-server: a cancellation while connecting ends the
connect, even when nats-py's handshake, or a failed attempt's retry loop, lets it slip."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import pytest
from nats.aio.client import Client

from aggregate.adapters.jetstream.connect import open_connection
from aggregate.adapters.nats_server import free_port

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


async def test_a_cancellation_that_a_failed_attempt_drops_still_stops_the_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_attempt = Client._connect_to_server
    attempts: list[Client] = []

    async def attempt_dropping_a_cancel(self: Client, *args: Any, **kwargs: Any) -> None:
        # What Python 3.11's asyncio.wait_for (in nats-py's transport) does when the
        # cancellation arrives as the attempt fails: the attempt's error is raised, the
        # CancelledError is swallowed, the task stays marked as cancelled. nats-py's
        # server selection catches the error and tries again, without end.
        attempts.append(self)
        try:
            await real_attempt(self, *args, **kwargs)
        finally:
            task = asyncio.current_task()
            assert task is not None
            if len(attempts) == 1:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0)

    monkeypatch.setattr(Client, "_connect_to_server", attempt_dropping_a_cancel)
    refused = f"nats://127.0.0.1:{free_port()}"

    async def connect() -> Client:
        return await open_connection([refused], timeout_s=120, name="cancelled")

    task = asyncio.get_running_loop().create_task(connect())
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)  # without the fix: retried until the 120 s deadline
    assert task.cancelled()
    assert len(attempts) == 1  # no attempt after the cancellation
    assert attempts[0].is_closed


async def test_a_connect_that_is_not_cancelled_returns_the_connected_client(
    shared_nats_server: NatsServerProcess,
) -> None:
    nc = await open_connection([shared_nats_server.url], timeout_s=10, name="plain")
    try:
        assert nc.is_connected
    finally:
        await nc.close()
