"""Protection on the gRPC surface: quota, open breaker and load shedding answer at once with
the right status and the ``retry-after-ms`` trailer (grpclib's and grpcio's clients); on a
``SubmitCommands`` stream a refused command is a result with an error and the stream goes
on."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import grpc
import pytest
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from aggregate.adapters.grpc import GrpcOptions
from aggregate.application.breaker import BreakerSettings, CircuitBreaker
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.application.protected import BreakerEventStore
from aggregate.application.quota import Protection
from aggregate.domain.errors import BackendUnavailableError
from aggregate.domain.quota import TenantQuota
from aggregate.gateway.v1 import aggregate_grpc
from aggregate.gateway.v1 import aggregate_pb2 as pb
from aggregate.programs.base import AggregateTypeSpec
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram, StaticTypes
from specs import bank
from tests.integration.grpc_harness import (
    ACME,
    OPEN,
    TYPE,
    GatedProgram,
    GrpclibClient,
    command,
    grpcio_stubs,
    open_server,
)

pytestmark = pytest.mark.anyio
Outcome = tuple[str, dict[str, str]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def protected_handler(
    protection: Protection, store: Any = None, program: Any = None
) -> CommandHandler:
    return CommandHandler(
        store=store or InMemoryEventStore(),
        types=StaticTypes(
            {
                TYPE: AggregateTypeSpec(
                    TYPE, program or FunctionProgram(TYPE, bank.decide, bank.apply)
                )
            }
        ),
        protection=protection,
        settings=HandlerSettings(retry_backoff_s=0),
    )


async def grpclib_submit(address: tuple[str, int], request: pb.SubmitCommandRequest) -> Outcome:
    channel = Channel(*address)
    try:
        stub = aggregate_grpc.CommandServiceStub(channel)
        async with stub.SubmitCommand.open(metadata=ACME, timeout=10) as stream:
            await stream.send_message(request, end=True)
            try:
                await stream.recv_initial_metadata()
                await stream.recv_message()
                await stream.recv_trailing_metadata()
            except GRPCError as exc:
                trailers = dict(stream.trailing_metadata or {})
                return exc.status.name, {k: v for k, v in trailers.items() if isinstance(v, str)}
        return "OK", {}
    finally:
        channel.close()


def grpcio_submit_sync(address: tuple[str, int], request: pb.SubmitCommandRequest) -> Outcome:
    with grpc.insecure_channel(
        "{}:{}".format(*address), options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        stub = grpcio_stubs().CommandServiceStub(channel)
        try:
            stub.SubmitCommand(request, metadata=tuple(ACME.items()), timeout=10)
        except grpc.RpcError as exc:
            trailers = {k: v for k, v in exc.trailing_metadata() or () if isinstance(v, str)}  # type: ignore[attr-defined]
            return exc.code().name, trailers  # type: ignore[attr-defined]
    return "OK", {}


async def submit(kind: str, address: tuple[str, int], request: pb.SubmitCommandRequest) -> Outcome:
    if kind == "grpclib":
        return await grpclib_submit(address, request)
    return await anyio.to_thread.run_sync(grpcio_submit_sync, address, request)


def frozen_quota(**limits: int) -> Protection:
    return Protection(TenantQuota(**limits), in_flight_retry_after_ms=40, clock=lambda: 0.0)


@pytest.mark.parametrize("kind", ["grpclib", "grpcio"])
async def test_over_quota_is_resource_exhausted_with_retry_after(kind: str) -> None:
    handler = protected_handler(frozen_quota(commands_per_second=4, burst=2))
    async with open_server(handler) as srv:
        with anyio.fail_after(30):
            outcomes = [await submit(kind, srv.address, command(OPEN)) for _ in range(3)]
    assert outcomes == [("OK", {}), ("OK", {}), ("RESOURCE_EXHAUSTED", {"retry-after-ms": "250"})]


@pytest.mark.parametrize("kind", ["grpclib", "grpcio"])
async def test_an_open_breaker_is_unavailable_with_retry_after(kind: str) -> None:
    store = InMemoryEventStore()
    breaker = CircuitBreaker("event_store", BreakerSettings(1, 60.0))
    handler = protected_handler(
        Protection(breakers=(breaker,)), store=BreakerEventStore(store, breaker)
    )
    store.fail_next_append(1)
    async with open_server(handler) as srv:
        with anyio.fail_after(30):
            first = await submit(kind, srv.address, command(OPEN))
            second = await submit(kind, srv.address, command(OPEN))
    assert first == ("UNAVAILABLE", {})  # the failure itself: may or may not have happened
    assert second[0] == "UNAVAILABLE"
    assert 59_000 < int(second[1]["retry-after-ms"]) <= 60_000
    assert store.appends == 0


@pytest.mark.parametrize("kind", ["grpclib", "grpcio"])
async def test_load_shedding_refuses_at_once_with_retry_after(kind: str) -> None:
    program = GatedProgram()
    options = GrpcOptions(max_in_flight=1, overload_retry_after_ms=70)
    handler = protected_handler(Protection(), program=program)
    async with open_server(handler, options) as srv:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                held: list[Outcome] = []

                async def hold() -> None:
                    held.append(await submit(kind, srv.address, command({**OPEN, "hold": True})))

                tg.start_soon(hold)
                await program.wait_entered(1)
                shed = await submit(kind, srv.address, command(OPEN))
                program.release.set()
    assert shed == ("RESOURCE_EXHAUSTED", {"retry-after-ms": "70"})
    assert held == [("OK", {})]
    assert srv.service.shed == 1


async def test_on_a_stream_refused_commands_are_results_and_the_stream_goes_on() -> None:
    handler = protected_handler(frozen_quota(commands_per_second=1, burst=2))
    requests = [command(OPEN, aggregate_id=str(uuid.uuid4())) for _ in range(4)]
    async with open_server(handler) as srv:
        client = GrpclibClient(*srv.address)
        try:
            with anyio.fail_after(30):
                reply = await client.submit_many(requests, ACME)
        finally:
            client.close()
    assert reply.status == "OK"
    kinds = [r.WhichOneof("result") for r in reply.results]
    assert kinds == ["response", "response", "error", "error"]
    assert reply.results[2].error.code == "RESOURCE_EXHAUSTED"
    assert "retry after 1000 ms" in reply.results[2].error.message


async def test_get_aggregate_behind_an_open_breaker_is_unavailable_with_retry_after() -> None:
    store = InMemoryEventStore()
    breaker = CircuitBreaker("event_store", BreakerSettings(1, 60.0))
    handler = protected_handler(Protection(), store=BreakerEventStore(store, breaker))
    with pytest.raises(BackendUnavailableError), breaker.guard():
        raise BackendUnavailableError("nats: timeout")
    async with open_server(handler) as srv:
        channel = Channel(*srv.address)
        try:
            stub = aggregate_grpc.CommandServiceStub(channel)
            with anyio.fail_after(30):
                async with stub.GetAggregate.open(metadata=ACME, timeout=10) as stream:
                    await stream.send_message(
                        pb.GetAggregateRequest(aggregate_type=TYPE, aggregate_id=str(uuid.uuid4())),
                        end=True,
                    )
                    await stream.recv_initial_metadata()
                    assert await stream.recv_message() is None
                    with pytest.raises(GRPCError) as info:
                        await stream.recv_trailing_metadata()
                    trailers = dict(stream.trailing_metadata or {})
        finally:
            channel.close()
    assert info.value.status.name == "UNAVAILABLE"
    assert 59_000 < int(str(trailers["retry-after-ms"])) <= 60_000


async def test_a_tenant_over_quota_is_refused_before_its_request_is_decoded() -> None:
    handler = protected_handler(frozen_quota(commands_per_second=1, burst=1))
    async with open_server(handler) as srv:
        with anyio.fail_after(30):
            first = await submit("grpclib", srv.address, command(OPEN))
            garbage = await submit("grpclib", srv.address, command("{not json"))
    assert first == ("OK", {})
    assert garbage == ("RESOURCE_EXHAUSTED", {"retry-after-ms": "1000"})
