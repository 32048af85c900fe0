"""A flooding tenant's dedicated connection is read more slowly (``aggregate.adapters.grpc.
pacing``), over real sockets and grpclib clients: its quota refusals come no faster than
its read schedule allows, another tenant's connection is unharmed, and a connection that
carries two tenants (a gateway's) is never slowed for one of them. A flooder's
``SubmitCommands`` streams are held to the same schedule on any connection, one long
stream or a stream per command.

The bound is on counts, not on speed: in any measured span of ``T`` seconds the server
can answer at most ``(pace + rate) * (T + 1)`` calls of the flooder (one second of its
schedule is free), plus the calls of a slice already being read; a slower machine only
answers fewer. Without the pacing a flood of refusals is answered as fast as the machine
goes, many times over the bound.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

import anyio
import pytest

from aggregate.adapters.grpc import GrpcOptions
from aggregate.application.quota import Protection
from aggregate.domain.quota import QuotaOverride, TenantQuota
from tests.integration.grpc_harness import OPEN, GrpclibClient, command, open_server
from tests.integration.test_grpc_early import call, handler_with

pytestmark = pytest.mark.anyio

PACE = 50
FLOODERS = 8
SPAN_S = 2.0
SLACK = 8 * FLOODERS
"""Calls of one slice being read when the debt begins, and calls in flight at the ends."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def protection() -> Protection:
    """``flood`` may run one command a second (the clock stands still: no refill)."""
    return Protection(
        TenantQuota(),
        file_overrides={"flood": QuotaOverride(commands_per_second=1, burst=1)},
        clock=lambda: 0.0,
    )


async def flood_for(
    client: GrpclibClient, seconds: float, calm: GrpclibClient | None = None
) -> tuple[int, float, list[str]]:
    """``FLOODERS`` loops of the flooder's commands on ``client`` for ``seconds`` (after
    one admitted command), with a calm tenant's commands beside them on ``calm``'s
    connection; returns the flooder's refusals, the span they took, the calm statuses."""
    started, deadline = await first_admitted(client, seconds)
    refused = 0

    async def flooder() -> None:
        nonlocal refused
        while time.monotonic() < deadline:
            reply = await call(client.stub, {"x-tenant-id": "flood"}, command(OPEN))
            assert reply.status == "RESOURCE_EXHAUSTED", reply
            refused += 1

    calm_statuses = await beside_calm([flooder] * FLOODERS, calm, deadline)
    return refused, time.monotonic() - started, calm_statuses


async def first_admitted(client: GrpclibClient, seconds: float) -> tuple[float, float]:
    """The flooder's one admitted command; then the flood's start and deadline."""
    first = await call(client.stub, {"x-tenant-id": "flood"}, command(OPEN))
    assert first.status == "OK"
    started = time.monotonic()
    return started, started + seconds


async def beside_calm(
    floods: list[Callable[[], Awaitable[None]]], calm: GrpclibClient | None, deadline: float
) -> list[str]:
    """Run ``floods`` with a calm tenant's commands beside them on ``calm`` (if any) until
    ``deadline``; the calm statuses."""
    calm_statuses: list[str] = []

    async def steady() -> None:
        assert calm is not None
        while time.monotonic() < deadline:
            request = command(OPEN, aggregate_id=str(uuid.uuid4()))
            calm_statuses.append((await calm.submit(request, {"x-tenant-id": "calm"})).status)

    async with anyio.create_task_group() as tg:
        for flood in floods:
            tg.start_soon(flood)
        if calm is not None:
            tg.start_soon(steady)
    return calm_statuses


async def stream_per_command_flood_for(
    client: GrpclibClient, seconds: float, calm: GrpclibClient | None = None
) -> tuple[int, float, list[str]]:
    """As ``flood_for``, each command on a ``SubmitCommands`` stream of its own: no early
    refusal, and no stream lives long enough to be paced by its own debt."""
    started, deadline = await first_admitted(client, seconds)
    refused = 0

    async def flooder() -> None:
        nonlocal refused
        while time.monotonic() < deadline:
            reply = await client.submit_many([command(OPEN)], {"x-tenant-id": "flood"})
            assert reply.status == "OK", reply
            [result] = reply.results
            assert result.error.code == "RESOURCE_EXHAUSTED", result
            refused += 1

    calm_statuses = await beside_calm([flooder] * FLOODERS, calm, deadline)
    return refused, time.monotonic() - started, calm_statuses


def bound(span: float, pace: int = PACE, rate: int = 1) -> float:
    return (pace + rate) * (span + 1) + SLACK


@pytest.mark.parametrize(
    "flood_with", [flood_for, stream_per_command_flood_for], ids=["unary", "stream-per-command"]
)
async def test_a_flooders_own_connection_is_read_at_its_schedule_and_calm_is_served(
    flood_with: Callable[..., Awaitable[tuple[int, float, list[str]]]],
) -> None:
    """Unary calls on the flooder's own connection, or a stream per command: a new stream
    of a tenant in debt is not read until the debt is paid, so that buys no more."""
    async with open_server(
        handler_with(protection()), GrpcOptions(pace_refusals_per_second=PACE)
    ) as srv:
        flood, calm = GrpclibClient(*srv.address), GrpclibClient(*srv.address)
        try:
            with anyio.fail_after(60):
                refused, span, calm_statuses = await flood_with(flood, SPAN_S, calm)
                after = await calm.submit(command(OPEN), {"x-tenant-id": "calm"})
        finally:
            flood.close()
            calm.close()
        paced = srv.pacer.paced
    assert refused <= bound(span), (refused, span)
    assert paced > 0
    assert calm_statuses
    assert set(calm_statuses) == {"OK"}
    assert after.status == "OK"


async def test_a_connection_carrying_two_tenants_is_not_slowed_for_one_of_them() -> None:
    """A gateway's connection: the calm tenant's commands share the flooder's connection,
    so the flood is never paced there; the calm tenant's commands all succeed."""
    async with open_server(
        handler_with(protection()), GrpcOptions(pace_refusals_per_second=PACE)
    ) as srv:
        shared = GrpclibClient(*srv.address)
        try:
            with anyio.fail_after(60):
                refused, span, calm_statuses = await flood_for(shared, SPAN_S, calm=shared)
        finally:
            shared.close()
        paced = srv.pacer.paced
    assert paced == 0
    assert refused > bound(span), (refused, span)  # a dedicated connection would be paced
    assert calm_statuses
    assert set(calm_statuses) == {"OK"}


STREAM_WINDOW = 64
"""Commands the flooder's stream keeps unanswered (the service's default stream window)."""


async def stream_flood_for(
    client: GrpclibClient, seconds: float, calm: GrpclibClient | None = None
) -> tuple[int, float, list[str]]:
    """The flooder's commands on one ``SubmitCommands`` stream, ``STREAM_WINDOW`` of them
    unanswered, for ``seconds`` (after one admitted command), with a calm tenant's unary
    commands beside it on ``calm``; returns the refusals, their span, the calm statuses."""
    started, deadline = await first_admitted(client, seconds)
    refused = 0
    slots = anyio.Semaphore(STREAM_WINDOW)

    async def flooder() -> None:
        nonlocal refused
        async with client.stub.SubmitCommands.open(
            metadata={"x-tenant-id": "flood"}, timeout=60
        ) as stream:
            await stream.send_request()

            async def send() -> None:
                while time.monotonic() < deadline:
                    await slots.acquire()
                    await stream.send_message(command(OPEN))
                await stream.end()

            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                async for result in stream:
                    slots.release()
                    assert result.error.code == "RESOURCE_EXHAUSTED", result
                    refused += 1

    calm_statuses = await beside_calm([flooder], calm, deadline)
    return refused, time.monotonic() - started, calm_statuses


async def test_a_flooders_stream_is_read_at_its_schedule_even_on_a_shared_connection() -> None:
    """A ``SubmitCommands`` stream carries one tenant's commands: it is paced by that
    tenant's schedule though its connection also carries the calm tenant's calls, and the
    calm tenant's commands on that connection all succeed."""
    async with open_server(
        handler_with(protection()), GrpcOptions(pace_refusals_per_second=PACE)
    ) as srv:
        shared = GrpclibClient(*srv.address)
        try:
            with anyio.fail_after(60):
                refused, span, calm_statuses = await stream_flood_for(shared, SPAN_S, shared)
                after = await shared.submit(command(OPEN), {"x-tenant-id": "calm"})
        finally:
            shared.close()
        paced = srv.pacer.paced
    assert refused <= bound(span) + STREAM_WINDOW, (refused, span)
    assert paced > 0
    assert calm_statuses
    assert set(calm_statuses) == {"OK"}
    assert after.status == "OK"


def stream_floor(span: float) -> float:
    """Twice what a paced stream may be answered (its window read ahead, too)."""
    return 2 * (bound(span) + STREAM_WINDOW)


@pytest.mark.parametrize(
    ("flood_with", "floor"),
    [(flood_for, bound), (stream_flood_for, stream_floor)],
    ids=["unary", "stream"],
)
async def test_without_pacing_the_same_flood_is_answered_far_past_that_schedule(
    flood_with: Callable[[GrpclibClient, float], Awaitable[tuple[int, float, list[str]]]],
    floor: Callable[[float], float],
) -> None:
    """The control: the bounds above are not ones the machine keeps anyway; refused in a
    stream, a flood comes back as fast as the client sends it."""
    async with open_server(
        handler_with(protection()), GrpcOptions(pace_refusals_per_second=0)
    ) as srv:
        flood = GrpclibClient(*srv.address)
        try:
            with anyio.fail_after(60):
                refused, span, _ = await flood_with(flood, SPAN_S)
        finally:
            flood.close()
        paced = srv.pacer.paced
    assert refused > floor(span), (refused, span)
    assert paced == 0
