"""Commands refused from their request headers alone (``aggregate.adapters.grpc.early``): a
tenant over its quota, an open breaker, the node at its in-flight limit. The answer comes
before the request message is sent at all, with the status, message, ``retry-after-ms``
trailer and echoed request context of the command path, counted as the command path counts
it; other tenants on the same HTTP/2 connection are unharmed (flow control included)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
import grpc
import pytest
from grpclib.exceptions import GRPCError

from aggregate.adapters.grpc import GrpcOptions
from aggregate.application.breaker import BreakerSettings, CircuitBreaker
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.application.protected import BreakerEventStore
from aggregate.application.quota import Protection, QuotaObserver
from aggregate.domain.errors import BackendUnavailableError
from aggregate.domain.quota import QuotaOverride, TenantQuota
from aggregate.gateway.v1 import aggregate_grpc
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
    RecordingObserver,
    command,
    grpcio_stubs,
    open_server,
)

pytestmark = pytest.mark.anyio
QUOTA_MESSAGE = (
    "tenant 'acme' is over its quota of 1 commands per second (burst 1); retry after 1000 ms"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Rejections(QuotaObserver):
    calls: list[tuple[str, str]] = field(default_factory=list)

    def quota_rejected(self, tenant_id: str, reason: str) -> None:
        self.calls.append((tenant_id, reason))


def handler_with(protection: Protection, store: Any = None, program: Any = None) -> CommandHandler:
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


@dataclass
class Answer:
    status: str
    message: str | None
    initial: dict[str, str]
    trailers: dict[str, str]


def _text(items: Any) -> dict[str, str]:
    return {k: v for k, v in items if isinstance(v, str)}


UNDECODABLE = b"\x0a\xff"
"""A ``SubmitCommand`` request message that is not protobuf (truncated): the command path
answers it INVALID_ARGUMENT when it reads it; only a refusal from the headers answers
otherwise."""


def raw_unary_sync(address: tuple[str, int], metadata: dict[str, str]) -> Answer:
    with grpc.insecure_channel(
        "{}:{}".format(*address), options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        method = channel.unary_unary("/aggregate.gateway.v1.CommandService/SubmitCommand")
        try:
            method(UNDECODABLE, metadata=tuple(metadata.items()), timeout=30)
        except grpc.RpcError as exc:
            return Answer(
                exc.code().name,  # type: ignore[attr-defined]
                exc.details(),  # type: ignore[attr-defined]
                _text(exc.initial_metadata() or ()),  # type: ignore[attr-defined]
                _text(exc.trailing_metadata() or ()),  # type: ignore[attr-defined]
            )
    raise AssertionError("an undecodable request was answered OK")


async def unary(address: tuple[str, int], metadata: dict[str, str]) -> Answer:
    """An undecodable ``SubmitCommand`` through grpcio's client, as it sees the answer."""
    return await anyio.to_thread.run_sync(raw_unary_sync, address, metadata)


async def call(
    stub: aggregate_grpc.CommandServiceStub, metadata: dict[str, str], request: Any
) -> Answer:
    """One ``SubmitCommand`` through grpclib's client, as it sees the answer."""
    stream = stub.SubmitCommand.open(metadata=metadata, timeout=30)
    try:
        async with stream:
            await stream.send_message(request, end=True)
            await stream.recv_initial_metadata()
            await stream.recv_message()
            await stream.recv_trailing_metadata()
    except GRPCError as exc:
        status, message = exc.status.name, exc.message
    else:
        status, message = "OK", None
    initial = _text((stream.initial_metadata or {}).items())
    trailers = _text((stream.trailing_metadata or {}).items())
    return Answer(status, message, initial, trailers)


def frozen(quota: TenantQuota, observer: QuotaObserver | None = None, **kw: Any) -> Protection:
    return Protection(quota, observer=observer, clock=lambda: 0.0, **kw)


async def test_over_quota_is_refused_from_the_headers_with_the_command_paths_answer() -> None:
    rejections = Rejections()
    protection = frozen(TenantQuota(commands_per_second=1, burst=1), rejections)
    observer = RecordingObserver()
    async with open_server(handler_with(protection), observer=observer) as srv:
        client = GrpclibClient(*srv.address)
        try:
            with anyio.fail_after(10):
                first = await client.submit(command(OPEN), ACME)
                answer = await unary(srv.address, {**ACME, "x-correlation-id": "corr-early-1"})
                after = await client.submit(command(OPEN), ACME)  # the connection still serves
        finally:
            client.close()
    assert first.status == "OK"
    assert answer.status == "RESOURCE_EXHAUSTED"
    assert answer.message == QUOTA_MESSAGE
    assert answer.trailers == {"retry-after-ms": "1000"}
    assert answer.initial["x-correlation-id"] == "corr-early-1"
    assert answer.initial["x-request-id"]
    assert answer.initial["traceparent"].startswith("00-")
    assert (after.status, after.message) == ("RESOURCE_EXHAUSTED", QUOTA_MESSAGE)
    assert rejections.calls == [("acme", "rate"), ("acme", "rate")]
    assert protection.status("acme").rejected == 2
    refused = ("finished", "acme", "_unknown", "resource_exhausted")
    assert observer.calls.count(refused) == 2
    assert observer.calls.count(("started", "acme", "_unknown")) == 2


def grpcio_refused(address: tuple[str, int]) -> tuple[str, str, dict[str, str], dict[str, str]]:
    with grpc.insecure_channel(
        "{}:{}".format(*address), options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        stub = grpcio_stubs().CommandServiceStub(channel)
        metadata = (*ACME.items(), ("x-correlation-id", "corr-grpcio"))
        stub.SubmitCommand(command(OPEN), metadata=metadata, timeout=10)
        try:
            stub.SubmitCommand(command(OPEN), metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return (
                exc.code().name,  # type: ignore[attr-defined]
                exc.details(),  # type: ignore[attr-defined]
                _text(exc.initial_metadata() or ()),  # type: ignore[attr-defined]
                _text(exc.trailing_metadata() or ()),  # type: ignore[attr-defined]
            )
    raise AssertionError("the second command was not refused")


async def test_grpcio_sees_the_echoed_context_and_only_retry_after_in_the_trailers() -> None:
    protection = frozen(TenantQuota(commands_per_second=1, burst=1))
    async with open_server(handler_with(protection)) as srv:
        with anyio.fail_after(30):
            code, details, initial, trailers = await anyio.to_thread.run_sync(
                grpcio_refused, srv.address
            )
        assert srv.early.refused == 1
    assert (code, details) == ("RESOURCE_EXHAUSTED", QUOTA_MESSAGE)
    assert initial["x-correlation-id"] == "corr-grpcio"
    assert trailers == {"retry-after-ms": "1000"}


async def test_an_open_breaker_is_refused_from_the_headers() -> None:
    store = InMemoryEventStore()
    breaker = CircuitBreaker("event_store", BreakerSettings(1, 60.0))
    with pytest.raises(BackendUnavailableError), breaker.guard():
        raise BackendUnavailableError("nats: timeout")
    handler = handler_with(Protection(breakers=(breaker,)), store=BreakerEventStore(store, breaker))
    async with open_server(handler) as srv:
        with anyio.fail_after(10):
            answer = await unary(srv.address, ACME)
    assert answer.status == "UNAVAILABLE"
    assert answer.message is not None
    assert "event_store" in answer.message
    assert 59_000 < int(answer.trailers["retry-after-ms"]) <= 60_000


async def test_at_the_in_flight_limit_a_command_is_shed_from_the_headers() -> None:
    program = GatedProgram()
    options = GrpcOptions(max_in_flight=1, overload_retry_after_ms=70)
    async with open_server(handler_with(Protection(), program=program), options) as srv:
        client = GrpclibClient(*srv.address)
        try:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    held: list[str] = []

                    async def hold() -> None:
                        held.append(
                            (await client.submit(command({**OPEN, "hold": True}), ACME)).status
                        )

                    tg.start_soon(hold)
                    await program.wait_entered(1)
                    answer = await unary(srv.address, ACME)
                    program.release.set()
        finally:
            client.close()
        assert srv.service.shed == 1
    assert (answer.status, answer.trailers) == ("RESOURCE_EXHAUSTED", {"retry-after-ms": "70"})
    assert held == ["OK"]


async def test_a_flooder_refused_early_leaves_a_steady_tenant_on_its_connection_unharmed() -> None:
    """One HTTP/2 connection (a gateway multiplexing tenants): the flooder's refused commands
    carry 50 KB each, ~150 times the connection's flow-control window in all, which the
    server never reads; the steady tenant's commands on the same connection all succeed."""
    protection = Protection(
        TenantQuota(),
        file_overrides={"flood": QuotaOverride(commands_per_second=1, burst=1)},
        clock=lambda: 0.0,
    )
    big = json.dumps({**OPEN, "owner": "f" * 50_000})
    async with open_server(handler_with(protection)) as srv:
        client = GrpclibClient(*srv.address)
        flood: list[str] = []
        retry: list[str | None] = []
        steady: list[str] = []
        try:
            with anyio.fail_after(60):
                flood.append((await client.submit(command(big), {"x-tenant-id": "flood"})).status)

                async def flooder() -> None:
                    for _ in range(200):
                        reply = await call(client.stub, {"x-tenant-id": "flood"}, command(big))
                        flood.append(reply.status)
                        retry.append(reply.trailers.get("retry-after-ms"))

                async def steady_tenant() -> None:
                    for _ in range(50):
                        request = command(OPEN, aggregate_id=str(uuid.uuid4()))
                        steady.append(
                            (await client.submit(request, {"x-tenant-id": "calm"})).status
                        )

                async with anyio.create_task_group() as tg:
                    for _ in range(4):
                        tg.start_soon(flooder)
                    tg.start_soon(steady_tenant)
                last = await client.submit(command(OPEN), {"x-tenant-id": "calm"})
        finally:
            client.close()
        early = srv.early.refused
    assert flood.count("OK") == 1
    assert flood.count("RESOURCE_EXHAUSTED") == 800
    assert early == 800
    assert retry == ["1000"] * 800
    assert steady == ["OK"] * 50
    assert last.status == "OK"


async def test_every_call_releases_its_promise_so_a_tenant_keeps_its_whole_quota() -> None:
    """A call that passes the early check holds a promise of its tenant's token until the
    command path admits it, or ends: an undecodable request, then commands one after
    another, spend the bucket exactly (three tokens, three commands, then a refusal)."""
    protection = frozen(TenantQuota(commands_per_second=1, burst=3))
    async with open_server(handler_with(protection)) as srv:
        client = GrpclibClient(*srv.address)
        try:
            with anyio.fail_after(20):
                warm = await client.submit(command(OPEN), ACME)  # tracked from now on
                bad = await unary(srv.address, ACME)
                replies = [(await client.submit(command(OPEN), ACME)).status for _ in range(3)]
        finally:
            client.close()
    assert warm.status == "OK"
    assert bad.status == "INVALID_ARGUMENT"
    assert replies == ["OK", "OK", "RESOURCE_EXHAUSTED"]
    assert protection.status("acme").rejected == 1
