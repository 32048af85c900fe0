"""Positions on the wire (SubmitCommand(s), GetAggregate) and the QueryService contract,
over real sockets through grpclib's and grpcio's clients."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import anyio
import pytest

from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.grpc_harness import (
    ACME,
    CLIENT_KINDS,
    OPEN,
    TYPE,
    command,
    open_client,
    open_server,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from aggregate.adapters.grpc import CommandServer
    from tests.integration.grpc_harness import Client

pytestmark = pytest.mark.anyio


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


async def test_responses_carry_the_stream_positions(client: Client) -> None:
    """Each command answers its message's stream sequence; a duplicate the original's;
    GetAggregate the aggregate's last message's (the store's sequence is global)."""
    deposit_id = str(uuid.uuid4())
    with anyio.fail_after(10):
        a = (await client.submit(command(OPEN), ACME)).response
        b = (await client.submit(command(OPEN), {"x-tenant-id": "globex"})).response
        deposit = command(
            {"type": "Deposit", "amount": 3}, aggregate_id=a.aggregate_id, command_id=deposit_id
        )
        first = (await client.submit(deposit, ACME)).response
        again = (await client.submit(deposit, ACME)).response
        streamed = await client.submit_many(
            [command({"type": "Deposit", "amount": 1}, aggregate_id=a.aggregate_id), deposit],
            ACME,
        )
        view = await client.get(
            pb.GetAggregateRequest(aggregate_type=TYPE, aggregate_id=a.aggregate_id), ACME
        )
    assert (a.position, b.position, first.position) == (1, 2, 3)
    assert (again.duplicate, again.position) == (True, 3)
    assert streamed.status == "OK", streamed
    assert [r.response.position for r in streamed.results] == [4, 3]
    assert (view.status, view.response.position, view.response.version) == ("OK", 4, 3)
