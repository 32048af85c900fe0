"""SubmitCommands: pipelined, results in request order, errors in place, bounded window;
through grpclib's and grpcio's clients."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from aggregate.adapters.grpc import GrpcOptions
from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.grpc_harness import (
    ACME,
    CLIENT_KINDS,
    OPEN,
    TYPE,
    GatedProgram,
    GrpclibClient,
    RecordingObserver,
    bank_handler,
    command,
    open_client,
    open_server,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from aggregate.adapters.grpc import CommandServer
    from tests.integration.grpc_harness import Client

pytestmark = pytest.mark.anyio
BAD_JSON = (
    "payload_json is not valid JSON: Expecting property name enclosed in double quotes: "
    "line 1 column 2 (char 1)"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[CommandServer]:
    async with open_server() as srv:
        yield srv


@pytest.fixture(params=CLIENT_KINDS)
def client(request: pytest.FixtureRequest, server: CommandServer) -> Iterator[Client]:
    with open_client(request.param, server.address) as c:
        yield c


def outcome(result: pb.SubmitCommandResult) -> tuple[str, object]:
    if result.WhichOneof("result") == "error":
        return (result.error.code, result.error.message)
    return ("OK", result.response.version)


async def test_mixed_stream_answers_in_order_with_errors_in_place(client: Client) -> None:
    account = str(uuid.uuid4())
    other = str(uuid.uuid4())
    requests = [
        command(OPEN, aggregate_id=account),
        command({"type": "Deposit", "amount": 100}, aggregate_id=account),
        command("{broken", aggregate_id=account),
        command({"type": "Withdraw", "amount": 30}, aggregate_id=account),
        command({"type": "Withdraw", "amount": 500}, aggregate_id=account),
        command(OPEN, aggregate_id=other),
        command(OPEN, aggregate_type="ledger"),
        command({"type": "Deposit", "amount": 5}, aggregate_id=account, expected_version=1),
        command({"type": "Deposit", "amount": 5}, aggregate_id=account, expected_version=3),
    ]
    with anyio.fail_after(10):
        reply = await client.submit_many(requests, {**ACME, "x-correlation-id": "batch-1"})
    assert reply.status == "OK", reply
    assert reply.initial_metadata["x-correlation-id"] == "batch-1"
    assert [outcome(r) for r in reply.results] == [
        ("OK", 1),
        ("OK", 2),
        ("INVALID_ARGUMENT", BAD_JSON),
        ("OK", 3),
        ("FAILED_PRECONDITION", "insufficient funds"),
        ("OK", 1),
        (
            "INVALID_ARGUMENT",
            "aggregate type 'ledger' is not configured; configured types: bank-account",
        ),
        ("ABORTED", f"acme/{TYPE}/{account} is at version 3, not the expected version 1"),
        ("OK", 4),
    ]
    assert reply.results[5].response.aggregate_id == other
    balance = json.loads(reply.results[8].response.events[0].payload_json)
    assert balance == {"amount": 5}


async def test_empty_stream_ends_ok(client: Client) -> None:
    with anyio.fail_after(10):
        reply = await client.submit_many([], ACME)
    assert (reply.status, reply.results) == ("OK", [])


async def test_stream_with_a_bad_tenant_fails_as_a_whole(client: Client) -> None:
    with anyio.fail_after(10):
        reply = await client.submit_many([command(OPEN)], {"x-tenant-id": "bad tenant"})
    assert reply.status == "INVALID_ARGUMENT"
    assert reply.results == []


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_stream_runs_commands_of_different_aggregates_concurrently(kind: str) -> None:
    """The second command must start while the first still runs: a one-at-a-time server
    would never get to it, and the test would time out."""
    program = GatedProgram()
    async with open_server(bank_handler(program=program)) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(10):
            requests = [command({**OPEN, "hold": True}) for _ in range(3)]
            replies: list[object] = []

            async def submit() -> None:
                replies.append(await client.submit_many(requests, ACME))

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit)
                await program.wait_entered(3)
                program.release.set()
    [reply] = replies
    assert reply.status == "OK"  # type: ignore[attr-defined]
    assert [outcome(r) for r in reply.results] == [("OK", 1)] * 3  # type: ignore[attr-defined]
    assert program.max_holding == 3


async def test_stream_window_bounds_outstanding_commands() -> None:
    """With a window of 2, at most 2 commands run at once however many the client sends;
    each answer lets the next one in."""
    program = GatedProgram()
    options = GrpcOptions(stream_window=2)
    async with open_server(bank_handler(program=program), options) as srv:
        client = GrpclibClient(*srv.address)
        try:
            with anyio.fail_after(10):
                async with client.stub.SubmitCommands.open(metadata=ACME) as stream:
                    for _ in range(5):
                        await stream.send_message(command({**OPEN, "hold": True}))
                    await stream.end()
                    await program.wait_entered(2)
                    program.release.set()
                    results = [r async for r in stream]
        finally:
            client.close()
    assert [outcome(r) for r in results] == [("OK", 1)] * 5
    assert program.entered == 5
    assert program.max_holding == 2


async def test_in_flight_limit_applies_to_stream_items() -> None:
    program = GatedProgram()
    observer = RecordingObserver()
    options = GrpcOptions(max_in_flight=1)
    async with open_server(bank_handler(program=program), options, observer=observer) as srv:
        client = GrpclibClient(*srv.address)
        try:
            with anyio.fail_after(10):
                async with client.stub.SubmitCommands.open(metadata=ACME) as stream:
                    await stream.send_message(command({**OPEN, "hold": True}))
                    await program.wait_entered(1)
                    await stream.send_message(command(OPEN))
                    await stream.end()
                    await observer.wait_for(("finished", "acme", TYPE, "resource_exhausted"))
                    program.release.set()
                    results = [r async for r in stream]
        finally:
            client.close()
    assert [outcome(r)[0] for r in results] == ["OK", "RESOURCE_EXHAUSTED"]
    assert "max_in_flight" in results[1].error.message


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_a_later_command_that_finishes_first_is_still_answered_second(kind: str) -> None:
    program = GatedProgram()
    observer = RecordingObserver()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    requests = [
        command({**OPEN, "hold": True}, aggregate_id=first),
        command(OPEN, aggregate_id=second),
    ]
    async with open_server(bank_handler(program=program), observer=observer) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(10):
            replies: list[Any] = []

            async def submit() -> None:
                replies.append(await client.submit_many(requests, ACME))

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit)
                await observer.wait_for(("finished", "acme", TYPE, "ok"))  # the second one
                assert program.holding == 1  # the first still runs
                program.release.set()
    [reply] = replies
    assert [r.response.aggregate_id for r in reply.results] == [first, second]
