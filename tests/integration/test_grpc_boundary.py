"""Hostile field values over real sockets, through grpclib's and grpcio's clients: bad JSON,
ids that are not canonical UUIDs, huge tenants/types/ids, huge rejection reasons, metadata
maps and versions out of bounds. Every one must get the status of the one table
(``aggregate.domain.status``) with a short message, before any program runs."""

from __future__ import annotations

import json
import re
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from aggregate.adapters.grpc import GrpcOptions
from aggregate.domain.errors import MAX_MESSAGE_BYTES
from aggregate.domain.manifest import ProgramSource
from aggregate.gateway.v1 import aggregate_pb2 as pb
from aggregate.programs.base import ProgramLimits
from aggregate.programs.starlark_program import StarlarkInlineProgram
from aggregate.testing.programs import FunctionProgram
from specs import bank
from tests.integration.grpc_harness import (
    ACME,
    CLIENT_KINDS,
    OPEN,
    TYPE,
    GatedProgram,
    RecordingObserver,
    bank_handler,
    command,
    open_client,
    open_server,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from aggregate.adapters.grpc import CommandServer
    from aggregate.domain.envelopes import JsonObject
    from tests.integration.grpc_harness import Client

pytestmark = pytest.mark.anyio
SHORT = 300
"""Longest message a refusal of a huge field may carry (it quotes a 64-character prefix)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class CountingProgram:
    """The bank rules; counts the decide calls (none may happen for a refused command).
    ``{"type": "Refuse", "reason": ...}`` is rejected with that reason."""

    name = TYPE

    def __init__(self) -> None:
        def decide(state: JsonObject, command: JsonObject) -> Any:
            if command["type"] == "Refuse":
                return bank.Rejection(command["reason"])
            return bank.decide(state, command)

        self.inner = FunctionProgram(TYPE, decide, bank.apply)
        self.decided = 0

    async def decide(self, state: JsonObject, command: JsonObject) -> Any:
        self.decided += 1
        return await self.inner.decide(state, command)

    async def apply(self, state: JsonObject, events: Any) -> JsonObject:
        return await self.inner.apply(state, events)


@pytest.fixture
def program() -> CountingProgram:
    return CountingProgram()


@pytest.fixture
async def server(program: CountingProgram) -> AsyncIterator[CommandServer]:
    async with open_server(bank_handler(program=program)) as srv:
        yield srv


@pytest.fixture(params=CLIENT_KINDS)
def client(request: pytest.FixtureRequest, server: CommandServer) -> Iterator[Client]:
    with open_client(request.param, server.address) as c:
        yield c


def deposit_text(extra: str) -> str:
    """A Deposit payload with ``extra`` spliced in as the value of field ``x``."""
    return '{"type": "Deposit", "amount": 1, "x": ' + extra + "}"


BAD_PAYLOADS = [
    ("[" * 10_000 + "]" * 10_000, "nests deeper than 64 levels"),
    ('{"a":' * 10_000 + "1" + "}" * 10_000, "nests deeper than 64 levels"),
    (deposit_text("[" * 65 + "]" * 65), "nests deeper than 64 levels at $['x'][0][0]"),
    (deposit_text('"\\ud800"'), "lone surrogate in the string at $['x']"),
    ('{"type": "Deposit", "\\udfff": 1}', "lone surrogate in the key $['\\udfff']"),
    (deposit_text("9" * 4300), "integer of 4300 digits"),
    (deposit_text("-" + "1" * 101), "integer of 101 digits"),
    (deposit_text("NaN"), "holds NaN"),
    (deposit_text("Infinity"), "holds Infinity"),
    (deposit_text("-Infinity"), "holds -Infinity"),
    (deposit_text("1e999"), "holds the number '1e999', too large for a 64-bit float"),
]
BAD_PAYLOAD_IDS = [
    "deep-arrays",
    "deep-objects",
    "depth-65",
    "surrogate",
    "surrogate-key",
    "int-4300",
    "int-101",
    "nan",
    "inf",
    "minus-inf",
    "1e999",
]


@pytest.mark.parametrize(("text", "expected"), BAD_PAYLOADS, ids=BAD_PAYLOAD_IDS)
async def test_bad_json_is_invalid_argument_before_any_program_runs(
    client: Client, program: CountingProgram, text: str, expected: str
) -> None:
    with anyio.fail_after(10):
        opened = await client.submit(command(OPEN), ACME)
        reply = await client.submit(command(text, aggregate_id=opened.response.aggregate_id), ACME)
    assert reply.status == "INVALID_ARGUMENT", reply
    assert reply.message is not None
    assert reply.message.startswith("payload_json ")
    assert expected in reply.message
    assert len(reply.message) < SHORT
    assert program.decided == 1  # the OpenAccount only


async def test_bad_json_items_of_a_stream_fail_in_place(
    client: Client, program: CountingProgram
) -> None:
    account = str(uuid.uuid4())
    requests = [command(OPEN, aggregate_id=account)]
    for text, _ in BAD_PAYLOADS:
        requests.append(command(text, aggregate_id=account))
    requests.append(command({"type": "Deposit", "amount": 3}, aggregate_id=account))
    with anyio.fail_after(20):
        reply = await client.submit_many(requests, ACME)
    assert reply.status == "OK", reply
    first, *bad, last = reply.results
    assert (first.response.version, last.response.version) == (1, 2)
    for result, (_, expected) in zip(bad, BAD_PAYLOADS, strict=True):
        assert result.error.code == "INVALID_ARGUMENT"
        assert expected in result.error.message
    assert program.decided == 2


async def test_payload_at_the_limits_is_accepted(client: Client) -> None:
    within = deposit_text("[" * 63 + "]" * 63)  # 64 levels with the payload object
    big = deposit_text("9" * 100)
    paired = deposit_text('"\\ud83d\\ude00"')  # a surrogate pair is one character
    with anyio.fail_after(10):
        opened = await client.submit(command(OPEN), ACME)
        account = opened.response.aggregate_id
        replies = [
            await client.submit(command(t, aggregate_id=account), ACME)
            for t in (within, big, paired)
        ]
    assert [r.status for r in replies] == ["OK"] * 3, replies


HOSTILE_IDS = [
    " 2222222-2222-2222-2222-222222222222",
    "0x333333-3333-3333-3333-333333333333",
    "+1111111-1111-1111-1111-111111111111",
    "\u0661" * 8
    + "-"
    + "\u0661" * 4
    + "-"
    + "\u0661" * 4
    + "-"
    + "\u0661" * 4
    + "-"
    + "\u0661" * 12,
    "uuid:44444444-4444-4444-4444-444444444444",
    "{55555555-5555-5555-5555-555555555555}",
    "urn:uuid:66666666-6666-6666-6666-666666666666",
    "77777777777777777777777777777777",
    "8888_888-8888-8888-8888-888888888888",
    "99999999-9999-9999-9999-99999999999\n",
]


@pytest.mark.parametrize("bad", HOSTILE_IDS)
async def test_ids_that_are_not_canonical_uuids_are_invalid_argument(
    client: Client, program: CountingProgram, bad: str
) -> None:
    with anyio.fail_after(10):
        as_aggregate = await client.submit(command(OPEN, aggregate_id=bad), ACME)
        as_command = await client.submit(command(OPEN, command_id=bad), ACME)
        as_read = await client.get(
            pb.GetAggregateRequest(aggregate_type=TYPE, aggregate_id=bad), ACME
        )
    for reply, field in (
        (as_aggregate, "aggregate_id"),
        (as_command, "command_id"),
        (as_read, "aggregate_id"),
    ):
        assert reply.status == "INVALID_ARGUMENT", reply
        assert f"{field} {bad!r} is not a UUID" in (reply.message or "")
    assert program.decided == 0


async def test_an_id_in_upper_case_names_the_same_aggregate(client: Client) -> None:
    with anyio.fail_after(10):
        opened = await client.submit(command(OPEN), ACME)
        account = opened.response.aggregate_id
        upper = account.upper()
        deposit = await client.submit(
            command({"type": "Deposit", "amount": 5}, aggregate_id=upper), ACME
        )
        view = await client.get(
            pb.GetAggregateRequest(aggregate_type=TYPE, aggregate_id=upper), ACME
        )
    assert deposit.status == "OK", deposit
    assert (deposit.response.aggregate_id, deposit.response.version) == (account, 2)
    assert (view.response.aggregate_id, view.response.version) == (account, 2)


HUGE = "x" * 10_000


@pytest.mark.parametrize(
    ("request_", "tenant", "expected"),
    [
        (command(OPEN), {"x-tenant-id": HUGE}, "tenant id 'xxxx"),
        (command(OPEN, aggregate_type=HUGE), ACME, "aggregate type 'xxxx"),
        (command(OPEN, aggregate_id=HUGE), ACME, "aggregate_id 'xxxx"),
        (command(OPEN, command_id=HUGE), ACME, "command_id 'xxxx"),
    ],
    ids=["tenant", "type", "aggregate-id", "command-id"],
)
async def test_huge_tenant_type_or_id_gets_a_short_invalid_argument(
    client: Client, request_: pb.SubmitCommandRequest, tenant: dict[str, str], expected: str
) -> None:
    """grpcio refuses trailers over its metadata limit (8 KiB by default): an echoed
    10,000-character value would turn the answer into RESOURCE_EXHAUSTED."""
    with anyio.fail_after(10):
        reply = await client.submit(request_, tenant)
    assert reply.status == "INVALID_ARGUMENT", reply
    message = reply.message or ""
    assert expected in message
    assert "…(10000 chars)" in message
    assert len(message) < SHORT


async def test_huge_unknown_type_in_a_read_gets_a_short_invalid_argument(client: Client) -> None:
    request = pb.GetAggregateRequest(aggregate_type=HUGE, aggregate_id=str(uuid.uuid4()))
    with anyio.fail_after(10):
        reply = await client.get(request, ACME)
    assert reply.status == "INVALID_ARGUMENT"
    assert len(reply.message or "") < SHORT


@pytest.mark.parametrize(
    ("reason", "chars"),
    [("r" * 1_000_000, "1000000"), ("€" * 100_000, "100000")],
    ids=["ascii", "three-byte"],
)
async def test_a_huge_rejection_reason_is_cut(client: Client, reason: str, chars: str) -> None:
    with anyio.fail_after(20):
        opened = await client.submit(command(OPEN), ACME)
        reply = await client.submit(
            command(
                {"type": "Refuse", "reason": reason}, aggregate_id=opened.response.aggregate_id
            ),
            ACME,
        )
    assert reply.status == "FAILED_PRECONDITION", reply
    message = reply.message or ""
    assert message.endswith(f"…({chars} chars)")
    assert message.startswith(reason[:100])
    assert len(message.encode()) <= MAX_MESSAGE_BYTES


@pytest.mark.parametrize(
    ("metadata", "limit"),
    [
        ({f"k{n}": "v" for n in range(65)}, "max_metadata_entries"),
        ({"k" * 129: "v"}, "max_metadata_key_bytes"),
        ({"k": "é" * 513}, "max_metadata_value_bytes"),
        ({f"k{n}": "v" * 1000 for n in range(17)}, "max_metadata_bytes"),
        ({f"k{n}": "v" * 500 for n in range(4000)}, "max_metadata_entries"),
    ],
    ids=["entries", "key", "value", "total", "two-megabytes"],
)
async def test_metadata_over_a_limit_is_resource_exhausted(
    client: Client, program: CountingProgram, metadata: dict[str, str], limit: str
) -> None:
    request = command(OPEN)
    request.metadata.update(metadata)
    with anyio.fail_after(20):
        reply = await client.submit(request, ACME)
    assert reply.status == "RESOURCE_EXHAUSTED", reply
    assert limit in (reply.message or "")
    assert len(reply.message or "") < SHORT
    assert program.decided == 0


async def test_metadata_within_the_limits_is_accepted(client: Client) -> None:
    request = command(OPEN)
    request.metadata.update({f"k{n:03d}": "v" * 200 for n in range(64)})  # 13,248 bytes
    request.metadata["k" * 128] = "é" * 512
    del request.metadata["k000"]
    with anyio.fail_after(10):
        reply = await client.submit(request, ACME)
    assert reply.status == "OK", reply


async def test_metadata_limits_are_options(program: CountingProgram) -> None:
    from aggregate.adapters.grpc.convert import RequestLimits

    options = GrpcOptions(request_limits=RequestLimits(max_metadata_entries=1))
    async with open_server(bank_handler(program=program), options) as srv:
        with open_client("grpclib", srv.address) as client, anyio.fail_after(10):
            one, two = command(OPEN), command(OPEN)
            one.metadata["a"] = "1"
            two.metadata.update({"a": "1", "b": "2"})
            replies = [await client.submit(one, ACME), await client.submit(two, ACME)]
    assert [r.status for r in replies] == ["OK", "RESOURCE_EXHAUSTED"]


async def test_expected_version_beyond_any_reachable_version_is_invalid_argument(
    client: Client,
) -> None:
    with anyio.fail_after(10):
        opened = await client.submit(command(OPEN), ACME)
        account = opened.response.aggregate_id
        deposit = {"type": "Deposit", "amount": 1}
        huge = await client.submit(
            command(deposit, aggregate_id=account, expected_version=2**64 - 1), ACME
        )
        largest = await client.submit(
            command(deposit, aggregate_id=account, expected_version=2**63 - 1), ACME
        )
    assert huge.status == "INVALID_ARGUMENT"
    assert "expected_version 18446744073709551615 is beyond" in (huge.message or "")
    assert largest.status == "ABORTED"  # well formed, just not the aggregate's version


FAILING = """
def decide(state, command):
    fail("cannot take " + command["secret"])

def apply(state, event):
    return state
"""


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_internal_program_error_carries_no_client_input_nor_source(kind: str) -> None:
    source = ProgramSource(FAILING, "/srv/programs/bank/decide.star")
    program = StarlarkInlineProgram(TYPE, source, source, ProgramLimits())
    async with open_server(bank_handler(program=program)) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(10):
            reply = await client.submit(
                command({"type": "Open", "secret": "client-secret-" + "s" * 5000}), ACME
            )
    assert reply.status == "INTERNAL"
    message = reply.message or ""
    assert "client-secret" not in message
    assert "/srv/programs" not in message
    assert "fail(" not in message
    assert f"aggregate type {TYPE} failed at line 3, column 5" in message
    assert re.search(r"\(error id [0-9a-f]{16}\); the service log has the details$", message)


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_both_spellings_of_an_id_are_one_chain_on_a_stream(kind: str) -> None:
    """Commands for one aggregate run in stream order, also when one names it in upper
    case: the second must not start while the first runs (the third, for another
    aggregate, does)."""
    program = GatedProgram()
    observer = RecordingObserver()
    account = str(uuid.uuid4())
    requests = [
        command({**OPEN, "hold": True}, aggregate_id=account),
        command({"type": "Deposit", "amount": 5}, aggregate_id=account.upper()),
        command({**OPEN, "hold": True}),
    ]
    async with open_server(bank_handler(program=program), observer=observer) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(10):
            replies: list[Any] = []

            async def submit() -> None:
                replies.append(await client.submit_many(requests, ACME))

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit)
                await program.wait_entered(2)  # the first and the third
                started = [c for c in observer.calls if c[0] == "started"]
                program.release.set()
    assert len(started) == 2
    [reply] = replies
    assert [r.response.version for r in reply.results] == [1, 2, 1]
    assert json.loads(reply.results[1].response.events[0].payload_json) == {"amount": 5}
