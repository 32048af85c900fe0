"""SubmitCommand and GetAggregate over real sockets, through grpclib's and grpcio's clients:
results, every status of the mapping table, tenant rules and context echo (DESIGN §9.1)."""

from __future__ import annotations

import json
import logging
import socket
import uuid
from typing import TYPE_CHECKING

import anyio
import pytest

from aggregate.adapters.grpc import GrpcOptions
from aggregate.domain.ids import DEFAULT_TENANT
from aggregate.gateway.v1 import aggregate_pb2 as pb
from specs import bank
from tests.integration.grpc_harness import (
    ACME,
    CLIENT_KINDS,
    OPEN,
    TYPE,
    GatedProgram,
    RecordingObserver,
    RefusingGate,
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
CLIENT_RESET = "Request was cancelled: Stream reset by remote party"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[CommandServer]:
    async with open_server(options=GrpcOptions(max_payload_bytes=1024)) as srv:
        yield srv


@pytest.fixture(params=CLIENT_KINDS)
def client(request: pytest.FixtureRequest, server: CommandServer) -> Iterator[Client]:
    with open_client(request.param, server.address) as c:
        yield c


async def open_account(client: Client, tenant: dict[str, str] = ACME) -> pb.SubmitCommandResponse:
    reply = await client.submit(command(OPEN), tenant)
    assert reply.status == "OK", reply
    return reply.response  # type: ignore[no-any-return]


async def test_submit_opens_an_account(client: Client) -> None:
    with anyio.fail_after(10):
        reply = await client.submit(command(OPEN), ACME)
    assert reply.status == "OK", reply
    response = reply.response
    assert (response.tenant_id, response.aggregate_type, response.version) == ("acme", TYPE, 1)
    assert uuid.UUID(response.aggregate_id).version == 7  # made by the server
    assert uuid.UUID(response.command_id).version == 7
    assert not response.duplicate
    [event] = response.events
    assert (event.event_type, event.version) == ("AccountOpened", 1)
    assert json.loads(event.payload_json) == {"owner": "ann"}
    assert event.timestamp.endswith("Z")


async def test_rejection_is_failed_precondition_with_the_reason(client: Client) -> None:
    with anyio.fail_after(10):
        opened = await open_account(client)
        reply = await client.submit(
            command({"type": "Withdraw", "amount": 5}, aggregate_id=opened.aggregate_id), ACME
        )
    assert (reply.status, reply.message) == ("FAILED_PRECONDITION", "insufficient funds")


async def test_expected_version_mismatch_is_aborted(client: Client) -> None:
    with anyio.fail_after(10):
        opened = await open_account(client)
        deposit = {"type": "Deposit", "amount": 5}
        stale = await client.submit(
            command(deposit, aggregate_id=opened.aggregate_id, expected_version=0), ACME
        )
        current = await client.submit(
            command(deposit, aggregate_id=opened.aggregate_id, expected_version=1), ACME
        )
    assert stale.status == "ABORTED"
    assert "expected version 0" in (stale.message or "")
    assert (current.status, current.response.version) == ("OK", 2)


async def test_duplicate_command_returns_the_original_result(client: Client) -> None:
    command_id = str(uuid.uuid4())
    with anyio.fail_after(10):
        opened = await open_account(client)
        deposit = command(
            {"type": "Deposit", "amount": 7},
            aggregate_id=opened.aggregate_id,
            command_id=command_id,
        )
        first = await client.submit(deposit, ACME)
        again = await client.submit(deposit, ACME)
    assert first.status == again.status == "OK"
    assert not first.response.duplicate
    assert again.response.duplicate
    assert again.response.version == first.response.version == 2
    assert list(again.response.events) == list(first.response.events)
    assert again.response.command_id == command_id


@pytest.mark.parametrize(
    ("tenant", "expected"),
    [
        ({"x-tenant-id": "bad tenant!"}, "tenant id 'bad tenant!' is invalid"),
        ({"x-tenant-id": "x" * 65}, "is invalid"),
        ({}, "missing x-tenant-id"),
    ],
    ids=["bad-characters", "too-long", "missing"],
)
async def test_bad_or_missing_tenant_is_invalid_argument(
    client: Client, tenant: dict[str, str], expected: str
) -> None:
    with anyio.fail_after(10):
        reply = await client.submit(command(OPEN), tenant)
    assert reply.status == "INVALID_ARGUMENT"
    assert expected in (reply.message or "")


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (command("{not json"), "payload_json is not valid JSON"),
        (command('{"amount": 1}'), 'non-empty string "type"'),
        (command(OPEN, aggregate_type="ledger"), "aggregate type 'ledger' is not configured"),
        (command(OPEN, aggregate_type="no spaces"), "aggregate type 'no spaces' is invalid"),
        (command(OPEN, command_id="not-a-uuid"), "command_id 'not-a-uuid' is not a UUID"),
        (command(OPEN, aggregate_id="12"), "aggregate_id '12' is not a UUID"),
    ],
    ids=["bad-json", "no-type", "unknown-type", "bad-type-token", "bad-command-id", "bad-id"],
)
async def test_invalid_requests_are_invalid_argument(
    client: Client, request_: pb.SubmitCommandRequest, expected: str
) -> None:
    with anyio.fail_after(10):
        reply = await client.submit(request_, ACME)
    assert reply.status == "INVALID_ARGUMENT"
    assert expected in (reply.message or "")


async def test_oversized_payload_is_resource_exhausted(client: Client) -> None:
    big = {"type": "OpenAccount", "owner": "é" * 600}  # 1,200+ bytes of UTF-8, < 1,024 chars
    with anyio.fail_after(10):
        reply = await client.submit(command(big), ACME)
        fits = await client.submit(command({"type": "OpenAccount", "owner": "a" * 900}), ACME)
    assert reply.status == "RESOURCE_EXHAUSTED"
    assert "max_payload_bytes" in (reply.message or "")
    assert fits.status == "OK"


async def test_context_is_echoed_in_initial_metadata(client: Client) -> None:
    context = {"x-correlation-id": "corr-42", "traceparent": TRACEPARENT, "x-request-id": "r-7"}
    with anyio.fail_after(10):
        ok = await client.submit(command(OPEN), {**ACME, **context})
        failed = await client.submit(command("{"), {**ACME, **context})
        generated = await client.submit(command(OPEN), ACME)
    for reply in (ok, failed):
        assert {k: reply.initial_metadata.get(k) for k in context} == context
    assert failed.status == "INVALID_ARGUMENT"
    assert generated.initial_metadata["traceparent"].startswith("00-")
    assert generated.initial_metadata["x-correlation-id"]


async def test_get_aggregate_found_and_not_found(client: Client) -> None:
    with anyio.fail_after(10):
        opened = await open_account(client)
        found = await client.get(
            pb.GetAggregateRequest(aggregate_type=TYPE, aggregate_id=opened.aggregate_id), ACME
        )
        other_tenant = await client.get(
            pb.GetAggregateRequest(aggregate_type=TYPE, aggregate_id=opened.aggregate_id),
            {"x-tenant-id": "globex"},
        )
        missing_id = await client.get(pb.GetAggregateRequest(aggregate_type=TYPE), ACME)
    assert found.status == "OK"
    view = found.response
    assert (view.tenant_id, view.aggregate_id, view.version) == ("acme", opened.aggregate_id, 1)
    assert json.loads(view.state_json) == bank.apply({}, {"type": "AccountOpened", "owner": "ann"})
    assert other_tenant.status == "NOT_FOUND"  # tenants never see each other's aggregates
    assert missing_id.status == "INVALID_ARGUMENT"


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_tenant_gate_refusal_is_unavailable_naming_the_owner(kind: str) -> None:
    observer = RecordingObserver()
    async with open_server(bank_handler(gate=RefusingGate()), observer=observer) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(10):
            reply = await client.submit(command(OPEN), ACME)
    assert reply.status == "UNAVAILABLE"
    assert "shard-b" in (reply.message or "")
    assert ("tenant_error", "acme", "unavailable") in observer.calls
    assert ("finished", "acme", TYPE, "unavailable") in observer.calls


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_single_tenant_server_uses_its_tenant(kind: str) -> None:
    single = GrpcOptions(multi_tenant=False)
    async with open_server(options=single) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(10):
            implicit = await client.submit(command(OPEN), {})
            other = await client.submit(command(OPEN), {"x-tenant-id": "acme"})
    assert (implicit.status, implicit.response.tenant_id) == ("OK", DEFAULT_TENANT)
    assert other.status == "INVALID_ARGUMENT"
    assert "single-tenant" in (other.message or "")


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_default_tenant_fills_in_a_missing_one(kind: str) -> None:
    options = GrpcOptions(default_tenant_id="initech")
    async with open_server(options=options) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(10):
            implicit = await client.submit(command(OPEN), {})
            explicit = await client.submit(command(OPEN), ACME)
    assert (implicit.status, implicit.response.tenant_id) == ("OK", "initech")
    assert (explicit.status, explicit.response.tenant_id) == ("OK", "acme")


async def test_observer_sees_every_command_outcome() -> None:
    observer = RecordingObserver()
    async with open_server(observer=observer) as srv:
        with open_client("grpclib", srv.address) as client, anyio.fail_after(10):
            opened = await open_account(client)
            withdraw = {"type": "Withdraw", "amount": 1}
            await client.submit(command(withdraw, aggregate_id=opened.aggregate_id), ACME)
            await client.submit(command(OPEN, aggregate_type="ledger"), ACME)
            await client.submit(command(OPEN), {"x-tenant-id": "no way"})
    finished = [c for c in observer.calls if c[0] == "finished"]
    assert finished == [
        ("finished", "acme", TYPE, "ok"),
        ("finished", "acme", TYPE, "failed_precondition"),
        ("finished", "acme", "_unknown", "invalid_argument"),
    ]
    assert observer.calls.count(("started", "acme", TYPE)) == 2
    assert ("tenant_error", "<invalid>", "invalid") in observer.calls


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_internal_error_is_logged_with_context_not_sent(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="aggregate.adapters.grpc")
    async with open_server(bank_handler(raising=True)) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(10):
            reply = await client.submit(
                command({"type": "Explode"}), {**ACME, "x-correlation-id": "corr-boom"}
            )
    assert reply.status == "INTERNAL"
    assert "secret" not in (reply.message or "")
    [record] = [r for r in caplog.records if r.name.startswith("aggregate.adapters.grpc")]
    assert f"error id {record.error_id}" in (reply.message or "")  # type: ignore[attr-defined]
    assert record.correlation_id == "corr-boom"  # type: ignore[attr-defined]
    assert record.exc_info is not None
    assert "secret internal detail" in str(record.exc_info[1])


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_in_flight_limit_is_resource_exhausted(kind: str) -> None:
    program = GatedProgram()
    options = GrpcOptions(max_in_flight=1)
    async with open_server(bank_handler(program=program), options) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(10):
            held: dict[str, object] = {}

            async def hold() -> None:
                held["reply"] = await client.submit(command({**OPEN, "hold": True}), ACME)

            async with anyio.create_task_group() as tg:
                tg.start_soon(hold)
                await program.wait_entered(1)
                refused = await client.submit(command(OPEN), ACME)
                program.release.set()
            after = await client.submit(command(OPEN), ACME)
    assert refused.status == "RESOURCE_EXHAUSTED"
    assert "max_in_flight" in (refused.message or "")
    assert held["reply"].status == "OK"  # type: ignore[attr-defined]
    assert after.status == "OK"
    assert srv.service.in_flight == 0


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_client_deadline_is_deadline_exceeded_without_internal_error(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    program = GatedProgram()
    observer = RecordingObserver()
    async with open_server(bank_handler(program=program), observer=observer) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(10):
            client_timeout = 0.3
            if kind == "grpclib":
                stub = client.stub  # type: ignore[union-attr]
                # grpclib's client enforces the deadline itself and raises TimeoutError.
                with pytest.raises(TimeoutError):
                    await stub.SubmitCommand(
                        command({**OPEN, "hold": True}), metadata=ACME, timeout=client_timeout
                    )
                status = "DEADLINE_EXCEEDED"
            else:
                import grpc

                def call() -> str:
                    try:
                        client.stub.SubmitCommand(  # type: ignore[union-attr]
                            command({**OPEN, "hold": True}),
                            metadata=tuple(ACME.items()),
                            timeout=client_timeout,
                        )
                    except grpc.RpcError as exc:
                        return exc.code().name  # type: ignore[attr-defined,no-any-return]
                    return "OK"

                status = await anyio.to_thread.run_sync(call)
            await program.wait_cancelled(1)  # the server cancels the handler at the deadline
    assert status == "DEADLINE_EXCEEDED"
    # Client and server both time the deadline: either the server's timer fires first and it
    # answers DEADLINE_EXCEEDED, or the client's does and it resets the stream. grpclib logs
    # either at INFO level; the cancelled command must not be taken for an internal error.
    [server_side] = [m for name, _, m in caplog.record_tuples if name == "grpclib.server"]
    assert server_side == "Deadline exceeded" or server_side.startswith(CLIENT_RESET), server_side
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    [finished] = [c for c in observer.calls if c[0] == "finished"]
    assert finished[:3] == ("finished", "acme", TYPE)
    assert finished[3] in {"deadline_exceeded", "cancelled"}


async def test_undecodable_request_is_invalid_argument(server: CommandServer) -> None:
    """Bytes that are no SubmitCommandRequest (sent raw through grpcio)."""
    import grpc

    def call() -> tuple[str, str]:
        target = "{}:{}".format(*server.address)
        with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
            method = channel.unary_unary(
                "/aggregate.gateway.v1.CommandService/SubmitCommand",
                request_serializer=lambda raw: raw,
                response_deserializer=pb.SubmitCommandResponse.FromString,
            )
            try:
                method(b"\x0a\xff\xff", metadata=tuple(ACME.items()), timeout=5)
            except grpc.RpcError as exc:
                return exc.code().name, exc.details()  # type: ignore[attr-defined]
            return "OK", ""

    with anyio.fail_after(10):
        status, message = await anyio.to_thread.run_sync(call)
    assert status == "INVALID_ARGUMENT"
    assert "not a valid protobuf message" in message


async def test_accepted_connections_have_nagle_off(server: CommandServer, client: Client) -> None:
    """Without TCP_NODELAY every answer waits for the client's delayed ACK (~40 ms)."""
    await open_account(client)
    sockets = [c.socket for c in server._connections]
    assert sockets
    for sock in sockets:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


async def test_many_calls_on_one_connection_echo_their_own_context(
    server: CommandServer, client: Client
) -> None:
    """The server's header blocks use no dynamic table and no Huffman coding: clients must
    still read every response's own echoed context, call after call, ok or failed."""
    with anyio.fail_after(30):
        for n in range(40):
            context = {
                "x-correlation-id": f"corr-{n}-{'x' * (n % 7)}",
                "traceparent": f"00-{n + 1:032x}-{n + 1:016x}-01",
                "x-request-id": f"req-{n}",
            }
            body = command(OPEN) if n % 3 else command("{")
            reply = await client.submit(body, {**ACME, **context})
            assert reply.status == ("OK" if n % 3 else "INVALID_ARGUMENT")
            assert {k: reply.initial_metadata.get(k) for k in context} == context
    assert len(server._connections) == 1
    (protocol,) = server._connections
    encoder = protocol.connection._connection.encoder
    assert encoder.header_table_size == 0
    assert len(encoder.header_table.dynamic_entries) == 0
