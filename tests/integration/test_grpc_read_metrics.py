"""GetAggregate reports each read to the observer (the read-path metrics): its outcome and
the type label, whichever way it ends."""

from __future__ import annotations

import uuid

import anyio
import pytest

from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.grpc_harness import (
    ACME,
    TYPE,
    RecordingObserver,
    command,
    open_client,
    open_server,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_every_get_aggregate_is_reported_with_its_outcome() -> None:
    observer = RecordingObserver()
    async with open_server(observer=observer) as server:
        with anyio.fail_after(20), open_client("grpclib", server.address) as client:
            opened = await client.submit(command({"type": "OpenAccount", "owner": "ann"}), ACME)
            requests = [
                pb.GetAggregateRequest(
                    aggregate_type=TYPE, aggregate_id=opened.response.aggregate_id
                ),
                pb.GetAggregateRequest(aggregate_type=TYPE, aggregate_id=str(uuid.uuid4())),
                pb.GetAggregateRequest(aggregate_type=TYPE, aggregate_id="not-a-uuid"),
                pb.GetAggregateRequest(
                    aggregate_type="no-such-type", aggregate_id=str(uuid.uuid4())
                ),
            ]
            statuses = [(await client.get(r, ACME)).status for r in requests]
    assert statuses == ["OK", "NOT_FOUND", "INVALID_ARGUMENT", "INVALID_ARGUMENT"]
    reads = [call for call in observer.calls if call[0] == "read"]
    assert reads == [
        ("read", "GetAggregate", "acme", TYPE, "ok"),
        ("read", "GetAggregate", "acme", TYPE, "not_found"),
        ("read", "GetAggregate", "acme", TYPE, "invalid_argument"),
        ("read", "GetAggregate", "acme", "_unknown", "invalid_argument"),
    ]
