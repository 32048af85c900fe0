"""One contract for every event store (STYLE 16): the in-memory reference and JetStream.

Each test runs against both stores through the ``harness`` fixture; the JetStream case uses
a real nats-server and a fresh stream per test. ``forge`` stores a raw message on a subject
the way a misbehaving writer could, bypassing ``append``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import pytest

from aggregate.adapters.jetstream import JetStreamEventStore, StreamPolicy, ensure_stream
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import CommandRecord, dumps, events_from_decision
from aggregate.domain.errors import (
    CorruptDataError,
    DuplicateAppendError,
    TenantAccessDeniedError,
    VersionConflictError,
)
from aggregate.domain.ids import AggregateKey, uuid7
from aggregate.testing.memory_store import InMemoryEventStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from aggregate.application.ports import EventStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Harness:
    store: EventStore
    forge: Callable[[str, bytes], Awaitable[int]]


@pytest.fixture(params=["memory", pytest.param("jetstream", marks=pytest.mark.integration)])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        memory = InMemoryEventStore()

        async def forge_memory(subject: str, data: bytes) -> int:
            return memory.publish_raw(subject, data)

        yield Harness(memory, forge_memory)
        return
    server = request.getfixturevalue("shared_nats_server")
    connect_nats = request.getfixturevalue("connect_nats")
    name = f"CONTRACT_{uuid.uuid4().hex[:12]}"
    async with connect_nats(server.url) as nc:
        js = nc.jetstream(timeout=5)
        await ensure_stream(js, StreamPolicy(name=name))
        store = JetStreamEventStore(nc, stream=name, request_timeout_s=5)

        async def forge_jetstream(subject: str, data: bytes) -> int:
            ack = await js.publish(subject, data)
            return int(ack.seq)

        try:
            yield Harness(store, forge_jetstream)
        finally:
            await store.aclose()
            await js.delete_stream(name)


def key(tenant: str = "acme", aggregate_id: uuid.UUID | None = None) -> AggregateKey:
    return AggregateKey(tenant, "account", aggregate_id or uuid7())


def record(
    key: AggregateKey, first_version: int, events: int = 1, command_id: uuid.UUID | None = None
) -> CommandRecord:
    decided = [{"type": "Deposited", "amount": first_version + i} for i in range(events)]
    return CommandRecord(
        key=key,
        command_id=command_id or uuid7(),
        correlation_id="corr-1",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        first_version=first_version,
        events=events_from_decision(decided, first_version=first_version),
    )


CTX = RequestContext.from_values("corr-1", None, None)


async def append(store: EventStore, rec: CommandRecord, expected: int) -> int:
    return await store.append(rec, expected_last_seq=expected, context=CTX)


pytestmark = pytest.mark.anyio


async def test_new_aggregate_is_appended_with_expected_zero(harness: Harness) -> None:
    k = key()
    rec = record(k, 1)
    with anyio.fail_after(10):
        seq = await append(harness.store, rec, 0)
        stored = await harness.store.read(k)
    assert seq >= 1
    assert [(s.seq, s.record) for s in stored] == [(seq, rec)]


async def test_read_of_unknown_aggregate_is_empty(harness: Harness) -> None:
    with anyio.fail_after(10):
        assert await harness.store.read(key()) == []
        assert await harness.store.read(key(), after_seq=5) == []


async def test_stale_expected_sequence_is_a_conflict(harness: Harness) -> None:
    k = key()
    with anyio.fail_after(10):
        first = await append(harness.store, record(k, 1), 0)
        for stale in (0, first + 1, first + 100):
            with pytest.raises(VersionConflictError) as caught:
                await append(harness.store, record(k, 2), stale)
            assert caught.value.expected == stale
            assert caught.value.actual == first
        second = await append(harness.store, record(k, 2), first)
        stored = await harness.store.read(k)
    assert second > first
    assert [s.seq for s in stored] == [first, second]
    assert [s.record.first_version for s in stored] == [1, 2]


async def test_command_is_one_message_with_all_its_events(harness: Harness) -> None:
    k = key()
    with anyio.fail_after(10):
        first = await append(harness.store, record(k, 1, events=3), 0)
        second = await append(harness.store, record(k, 4, events=2), first)
        stored = await harness.store.read(k)
    assert second == first + 1, "a command of several events must be one message"
    assert len(stored) == 2
    versions = [e.version for s in stored for e in s.record.events]
    assert versions == [1, 2, 3, 4, 5]
    assert [e.payload["amount"] for e in stored[0].record.events] == [1, 2, 3]


async def test_appends_keep_their_order_per_aggregate(harness: Harness) -> None:
    keys = [key() for _ in range(3)]
    last = dict.fromkeys(keys, 0)
    version = dict.fromkeys(keys, 1)
    written: dict[AggregateKey, list[tuple[int, uuid.UUID]]] = {k: [] for k in keys}
    with anyio.fail_after(20):
        for i in range(45):
            k = keys[(i * 7) % 3]
            rec = record(k, version[k], events=1 + i % 2)
            last[k] = await append(harness.store, rec, last[k])
            version[k] = rec.last_version + 1
            written[k].append((last[k], rec.command_id))
        for k in keys:
            stored = await harness.store.read(k)
            assert [(s.seq, s.record.command_id) for s in stored] == written[k]
            versions = [e.version for s in stored for e in s.record.events]
            assert versions == list(range(1, version[k]))


async def test_read_after_a_sequence_returns_only_later_records(harness: Harness) -> None:
    k, other = key(), key()
    with anyio.fail_after(10):
        s1 = await append(harness.store, record(k, 1), 0)
        s2 = await append(harness.store, record(k, 2), s1)
        between = await append(harness.store, record(other, 1), 0)
        s3 = await append(harness.store, record(k, 3), s2)
        assert [s.seq for s in await harness.store.read(k, after_seq=s1)] == [s2, s3]
        assert [s.seq for s in await harness.store.read(k, after_seq=between)] == [s3]
        assert await harness.store.read(k, after_seq=s3) == []


async def test_read_at_returns_only_the_keys_record(harness: Harness) -> None:
    k, other = key(), key()
    with anyio.fail_after(10):
        mine = record(k, 1)
        s1 = await append(harness.store, mine, 0)
        s2 = await append(harness.store, record(other, 1), 0)
        found = await harness.store.read_at(k, s1)
        assert found is not None
        assert (found.seq, found.record) == (s1, mine)
        assert await harness.store.read_at(k, s2) is None
        assert await harness.store.read_at(k, s2 + 50) is None
        assert await harness.store.read_at(k, 0) is None


async def test_same_aggregate_id_under_two_tenants_is_two_aggregates(harness: Harness) -> None:
    shared_id = uuid7()
    a, b = key("tenant-a", shared_id), key("tenant-b", shared_id)
    with anyio.fail_after(10):
        a1 = await append(harness.store, record(a, 1), 0)
        b1 = await append(harness.store, record(b, 1), 0)
        with pytest.raises(VersionConflictError):
            await append(harness.store, record(b, 2), a1)
        a2 = await append(harness.store, record(a, 2), a1)
        read_a = await harness.store.read(a)
        read_b = await harness.store.read(b)
        assert await harness.store.read_at(a, b1) is None
        assert await harness.store.read_at(b, a2) is None
    assert [s.seq for s in read_a] == [a1, a2]
    assert [s.seq for s in read_b] == [b1]
    assert {s.record.key.tenant_id for s in read_a} == {"tenant-a"}
    assert {s.record.key.tenant_id for s in read_b} == {"tenant-b"}


async def test_record_naming_another_tenant_is_refused(harness: Harness) -> None:
    victim = key("tenant-a")
    forged = record(AggregateKey("tenant-b", victim.aggregate_type, victim.aggregate_id), 1)
    with anyio.fail_after(10):
        seq = await harness.forge(victim.subject, forged.encode())
        with pytest.raises(TenantAccessDeniedError):
            await harness.store.read(victim)
        with pytest.raises(TenantAccessDeniedError):
            await harness.store.read_at(victim, seq)


async def test_malformed_record_is_reported_as_corrupt(harness: Harness) -> None:
    k = key()
    with anyio.fail_after(10):
        await harness.forge(k.subject, b"not json")
        with pytest.raises(CorruptDataError):
            await harness.store.read(k)
        wrong_version = record(k, 1).to_json()
        wrong_version["events"][0]["version"] = 7
        other = key()
        await harness.forge(
            other.subject, dumps(wrong_version | {"aggregate_id": str(other.aggregate_id)})
        )
        with pytest.raises(CorruptDataError):
            await harness.store.read(other)


async def test_same_command_appended_twice_is_a_conflict(harness: Harness) -> None:
    """A retried publish whose first attempt landed answers a conflict (DESIGN §4.3): the
    expected sequence is checked before de-duplication, so the handler resolves it from the
    history, where the command id is found."""
    k = key()
    rec = record(k, 1)
    with anyio.fail_after(10):
        seq = await append(harness.store, rec, 0)
        with pytest.raises(VersionConflictError):
            await append(harness.store, rec, 0)
        stored = await harness.store.read(k)
    assert [(s.seq, s.record.command_id) for s in stored] == [(seq, rec.command_id)]


async def test_same_command_id_at_the_current_sequence_is_a_reported_duplicate(
    harness: Harness,
) -> None:
    """Within the duplicate window, an append whose message id is stored and whose expected
    sequence is current stores nothing and names the earlier message's sequence."""
    k = key()
    first = record(k, 1)
    with anyio.fail_after(10):
        seq1 = await append(harness.store, first, 0)
        seq2 = await append(harness.store, record(k, 2), seq1)
        again = record(k, 3, command_id=first.command_id)
        with pytest.raises(DuplicateAppendError) as duplicate:
            await append(harness.store, again, seq2)
        stored = await harness.store.read(k)
    assert duplicate.value.seq == seq1
    assert [s.seq for s in stored] == [seq1, seq2]
