"""The command server's graceful drain (DESIGN §3), and why grpclib needs it.

grpclib's ``Server.close()`` cancels in-flight calls and leaves accepted connections open,
so calls on an open channel keep being served after it. ``CommandServer.drain`` must: let
in-flight calls finish, refuse new calls with UNAVAILABLE, then close the listener and send
GOAWAY so clients reconnect elsewhere. The same scenario run against plain
``Server.close()`` is a strict xfail: if grpclib ever fixes this, that test says so.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import anyio
import h2.config
import h2.connection
import h2.events
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aggregate.adapters.grpc import CommandServer, GrpcOptions
from tests.integration.grpc_harness import (
    ACME,
    CLIENT_KINDS,
    OPEN,
    GatedProgram,
    GrpclibClient,
    bank_handler,
    command,
    open_client,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from tests.integration.grpc_harness import Client, Reply

pytestmark = pytest.mark.anyio
HOLD = {**OPEN, "hold": True}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def graceful(server: CommandServer) -> Callable[[], Awaitable[bool]]:
    server.begin_drain()
    return lambda: server.drain(5.0)


def plain_close(server: CommandServer) -> Callable[[], Awaitable[bool]]:
    """What grpclib offers on its own: ``close()`` then ``wait_closed()``."""
    server.set_serving(False)
    server.server.close()

    async def finish() -> bool:
        await server.server.wait_closed()
        return True

    return finish


async def drain_scenario(kind: str, stop: Callable[[CommandServer], Any]) -> None:
    program = GatedProgram()
    server = CommandServer(bank_handler(program=program), GrpcOptions())
    await server.start()
    try:
        with open_client(kind, server.address) as client, anyio.fail_after(10):
            warm = await client.submit(command(OPEN), ACME)  # the channel is connected
            assert warm.status == "OK"
            replies: dict[str, Reply | bool] = {}

            async def slow() -> None:
                replies["slow"] = await client.submit(command(HOLD), ACME)

            async def finish(wait: Callable[[], Awaitable[bool]]) -> None:
                replies["drained"] = await wait()

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                await program.wait_entered(1)
                tg.start_soon(finish, stop(server))
                late = await client.submit(command(OPEN), ACME)  # same, already-open channel
                assert late.status == "UNAVAILABLE", late
                assert "shutting down" in (late.message or "")
                program.release.set()
            slow_reply = replies["slow"]
            assert slow_reply.status == "OK", slow_reply  # type: ignore[union-attr]
            assert slow_reply.response.version == 1  # type: ignore[union-attr]
            assert replies["drained"] is True
            await assert_refused(client)
            assert program.cancelled == 0
            assert server.in_flight_calls == 0
    finally:
        with anyio.CancelScope(shield=True):
            await server.aclose()


async def assert_refused(client: Client) -> None:
    """After the drain the connection is gone and nothing listens: the call fails."""
    try:
        reply = await client.submit(command(OPEN), ACME)
    except OSError:  # grpclib reconnects, and the connection is refused
        return
    assert reply.status == "UNAVAILABLE", reply
    assert "shutting down" not in (reply.message or ""), "the connection should be closed"


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_drain_finishes_in_flight_and_refuses_new_calls(kind: str) -> None:
    await drain_scenario(kind, graceful)


@pytest.mark.xfail(reason="grpclib Server.close() is not graceful (#107, #148)", strict=True)
async def test_plain_grpclib_close_is_not_graceful() -> None:
    await drain_scenario("grpclib", plain_close)


async def test_drain_pings_then_sends_goaway_and_closes_idle_connections() -> None:
    """A raw HTTP/2 client (h2) on an idle connection: the drain PINGs it, and once the PING
    is acknowledged sends GOAWAY (no error) and closes the connection."""
    server = CommandServer(bank_handler(), GrpcOptions())
    host, port = await server.start()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    events: list[h2.events.Event] = []
    try:
        with anyio.fail_after(10):
            stream = await anyio.connect_tcp(host, port)
            async with stream, anyio.create_task_group() as tg:
                conn.initiate_connection()
                await stream.send(conn.data_to_send())
                settings_acked = anyio.Event()

                async def read_until_closed() -> None:
                    while True:
                        try:
                            data = await stream.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            return
                        new = conn.receive_data(data)
                        events.extend(new)
                        if any(isinstance(e, h2.events.SettingsAcknowledged) for e in new):
                            settings_acked.set()
                        if outgoing := conn.data_to_send():  # PING and SETTINGS acks
                            await stream.send(outgoing)

                tg.start_soon(read_until_closed)
                await settings_acked.wait()
                assert await server.drain(5.0) is True
        kinds = [type(e) for e in events]
        assert h2.events.PingReceived in kinds
        assert kinds[-1] is h2.events.ConnectionTerminated
        assert kinds.index(h2.events.PingReceived) < kinds.index(h2.events.ConnectionTerminated)
        assert events[-1].error_code == h2.errors.ErrorCodes.NO_ERROR  # type: ignore[attr-defined]
        with pytest.raises(ConnectionRefusedError), socket.create_connection((host, port), 5):
            pass
    finally:
        with anyio.CancelScope(shield=True):
            await server.aclose()


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_drain_grace_runs_out_and_cuts_off_the_rest_with_unavailable(kind: str) -> None:
    program = GatedProgram()
    server = CommandServer(bank_handler(program=program), GrpcOptions())
    await server.start()
    try:
        with open_client(kind, server.address) as client, anyio.fail_after(10):
            replies: list[Any] = []

            async def stuck() -> None:
                replies.append(await client.submit(command(HOLD), ACME))

            async with anyio.create_task_group() as tg:
                tg.start_soon(stuck)
                await program.wait_entered(1)
                drained = await server.drain(0.05)
        assert drained is False
        assert program.cancelled == 1
        [reply] = replies
        assert reply.status == "UNAVAILABLE", reply
        assert "may or may not have been applied" in (reply.message or "")
    finally:
        with anyio.CancelScope(shield=True):
            await server.aclose()


async def test_drain_ends_open_streams_after_answering_what_they_read() -> None:
    """A gateway's stream stays open; the drain answers the commands the server has read,
    then ends the stream with UNAVAILABLE (the rest go to another node)."""
    program = GatedProgram()
    server = CommandServer(bank_handler(program=program), GrpcOptions())
    await server.start()
    client = GrpclibClient(*server.address)
    try:
        results: list[Any] = []
        with anyio.fail_after(10):
            # grpclib's client surfaces the final status while iterating, after its end, or
            # when the call closes, depending on when the trailers arrive.
            with pytest.raises(GRPCError) as ended:  # noqa: PT012
                async with client.stub.SubmitCommands.open(metadata=ACME) as stream:
                    await stream.send_message(command(HOLD))
                    await stream.send_message(command(HOLD))
                    await program.wait_entered(2)
                    server.begin_drain()
                    program.release.set()
                    async for result in stream:
                        results.append(result)
                    await stream.end()
                    await stream.recv_trailing_metadata()
            assert await server.drain(5.0) is True
        assert [r.response.version for r in results] == [1, 1]
        assert ended.value.status is Status.UNAVAILABLE
        assert "send the remaining commands to another node" in (ended.value.message or "")
    finally:
        client.close()
        with anyio.CancelScope(shield=True):
            await server.aclose()


async def test_drain_waits_for_a_half_closed_stream_to_be_answered() -> None:
    program = GatedProgram()
    server = CommandServer(bank_handler(program=program), GrpcOptions())
    await server.start()
    try:
        with open_client("grpclib", server.address) as client, anyio.fail_after(10):
            replies: list[Any] = []

            async def submit() -> None:
                replies.append(await client.submit_many([command(HOLD), command(HOLD)], ACME))

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit)
                await program.wait_entered(2)
                server.begin_drain()
                program.release.set()
                assert await server.drain(5.0) is True
        [reply] = replies
        assert reply.status == "OK"  # the client had sent everything: all of it is answered
        assert [r.response.version for r in reply.results] == [1, 1]
    finally:
        with anyio.CancelScope(shield=True):
            await server.aclose()


async def test_serve_reports_the_bound_address_and_returns_after_drain() -> None:
    server = CommandServer(bank_handler(), GrpcOptions())
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            host, port = await tg.start(server.serve)
            assert (host, port) == server.address
            assert port > 0
            with open_client("grpclib", (host, port)) as client:
                assert (await client.submit(command(OPEN), ACME)).status == "OK"
            assert await server.drain(1.0) is True
        # serve() returned on its own once the drain was done: the task group exited.
    assert server.draining
