"""Command schemas in the real service: the bundled bank example ships them, and a payload
that fails its schema is refused with INVALID_ARGUMENT (JSON path and rule) through
grpclib's client and grpcio's, before any program runs: nothing is stored."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio
import pytest

from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.grpc_harness import CLIENT_KINDS, command, open_client
from tests.integration.service_harness import ServiceProcess, running_service

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
ACME = {"x-tenant-id": "acme"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with running_service(tmp_path_factory.mktemp("svc")) as svc:
        yield svc


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_a_schema_invalid_payload_is_refused_and_nothing_is_stored(
    service: ServiceProcess, kind: str
) -> None:
    with anyio.fail_after(30), open_client(kind, service.grpc) as client:
        opened = await client.submit(command({"type": "OpenAccount", "owner": "ann"}), ACME)
        assert opened.status == "OK", opened
        agg = str(opened.response.aggregate_id)

        refused = await client.submit(
            command({"type": "Deposit", "amount": 0, "memo": "x" * 500}, aggregate_id=agg), ACME
        )
        assert (refused.status, refused.message) == (
            "INVALID_ARGUMENT",
            "payload_json does not match the schema of command type 'Deposit': at $.amount: "
            "must be bigger than or equal to 1 (rule minimum)",
        )
        missing = await client.submit(command({"type": "Withdraw"}, aggregate_id=agg), ACME)
        assert missing.status == "INVALID_ARGUMENT"
        assert "at $: must contain ['amount'] properties (rule required)" in (missing.message or "")
        no_owner = await client.submit(command({"type": "OpenAccount", "owner": ""}), ACME)
        assert no_owner.status == "INVALID_ARGUMENT"
        assert "at $.owner:" in (no_owner.message or "")
        view = await client.get(
            pb.GetAggregateRequest(aggregate_type="bank-account", aggregate_id=agg), ACME
        )
        assert view.status == "OK"
        assert (view.response.version, json.loads(view.response.state_json)) == (
            1,
            {"owner": "ann", "balance": 0},
        )
        # A command type without a schema still reaches decide, which rejects it.
        unknown = await client.submit(command({"type": "Close"}, aggregate_id=agg), ACME)
        assert (unknown.status, unknown.message) == (
            "FAILED_PRECONDITION",
            "unknown command type Close",
        )
