"""JetStream-specific behaviour of the event store: headers, batch direct get, failures."""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import nats.errors
import pytest

from aggregate.adapters.jetstream import (
    DirectGetClient,
    JetStreamEventStore,
    StreamPolicy,
    ensure_stream,
)
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import CommandRecord, events_from_decision
from aggregate.domain.errors import (
    BackendUnavailableError,
    VersionConflictError,
)
from aggregate.domain.ids import AggregateKey, uuid7

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg

    from aggregate.adapters.nats_server import NatsServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def nc(shared_nc: NATS) -> NATS:
    return shared_nc


@pytest.fixture
def stream(event_stream: str) -> str:
    return event_stream


def record(key: AggregateKey, first_version: int, command_id: uuid.UUID | None = None) -> Any:
    return CommandRecord(
        key=key,
        command_id=command_id or uuid7(),
        correlation_id="corr-7",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        first_version=first_version,
        events=events_from_decision(
            [{"type": "Opened"}, {"type": "Deposited", "amount": 5}], first_version=first_version
        ),
    )


def new_key(tenant: str = "acme") -> AggregateKey:
    return AggregateKey(tenant, "account", uuid7())


CTX = RequestContext.from_values(
    "corr-7", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "req-1"
)


async def fill(store: JetStreamEventStore, key: AggregateKey, commands: int) -> list[int]:
    seqs: list[int] = []
    last = 0
    for i in range(commands):
        last = await store.append(record(key, 1 + 2 * i), expected_last_seq=last, context=CTX)
        seqs.append(last)
    return seqs


async def test_message_carries_the_design_headers(nc: NATS, stream: str) -> None:
    store = JetStreamEventStore(nc, stream=stream)
    key = new_key()
    first = record(key, 1)
    second = record(key, 3)
    with anyio.fail_after(10):
        s1 = await store.append(first, expected_last_seq=0, context=CTX)
        s2 = await store.append(second, expected_last_seq=s1, context=CTX)
        raw = await nc.jetstream().get_msg(stream, s2)
    assert raw.subject == f"tenant.acme.aggregate.account.{key.aggregate_id}"
    assert raw.data == second.encode()
    headers = dict(raw.headers or {})
    expected = {
        "Nats-Msg-Id": f"{raw.subject}.{second.command_id}",
        "Nats-Expected-Last-Subject-Sequence": str(s1),
        "tenant-id": "acme",
        "x-correlation-id": "corr-7",
        "correlation-id": "corr-7",
        "traceparent": CTX.traceparent,
        "trace-id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "x-request-id": "req-1",
        "command-id": str(second.command_id),
        "aggregate-type": "account",
        "aggregate-id": str(key.aggregate_id),
        "version": "4",
        "content-type": "application/json",
    }
    assert {name: headers.get(name) for name in expected} == expected
    ours = {name for name in headers if not name.startswith("Nats-")}
    assert ours == {name for name in expected if not name.startswith("Nats-")}
    await store.aclose()


async def test_reads_page_through_batches_and_match_the_fallback(nc: NATS, stream: str) -> None:
    batched = JetStreamEventStore(nc, stream=stream, read_batch_size=7)
    one_by_one = JetStreamEventStore(nc, stream=stream, use_batch_get=False)
    key = new_key()
    pages: list[int] = []
    real_get_batch = DirectGetClient.get_batch

    async def counting_get_batch(self: DirectGetClient, *args: Any) -> Any:
        page = await real_get_batch(self, *args)
        pages.append(len(page.messages))
        return page

    with anyio.fail_after(15):
        seqs = await fill(batched, key, 30)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(DirectGetClient, "get_batch", counting_get_batch)
            read = await batched.read(key)
            tail = await batched.read(key, after_seq=seqs[20])
        fallback = await one_by_one.read(key)
    assert [s.seq for s in read] == seqs
    assert [s.record.first_version for s in read] == list(range(1, 61, 2))
    assert pages[:5] == [7, 7, 7, 7, 2], "30 records in pages of 7, no extra round trip"
    assert [s.seq for s in tail] == seqs[21:]
    assert fallback == read
    assert batched.batch_get_supported is True
    await batched.aclose()
    await one_by_one.aclose()


async def test_batch_ended_by_its_byte_limit_is_continued(nc: NATS, stream: str) -> None:
    store = JetStreamEventStore(nc, stream=stream)
    key = new_key()
    client = DirectGetClient(nc, stream, batch_max_bytes=2500)
    with anyio.fail_after(10):
        seqs = await fill(store, key, 12)
        first_page = await client.get_batch(key.subject, 1, 1000)
        messages = await client.read_subject(key.subject, 1, batch_size=1000)
    assert 0 < len(first_page.messages) < 12
    assert first_page.num_pending == 12 - len(first_page.messages)
    assert [m.seq for m in messages] == seqs
    await client.aclose()
    await store.aclose()


async def test_one_aggregate_is_read_among_many(nc: NATS, stream: str) -> None:
    store = JetStreamEventStore(nc, stream=stream, read_batch_size=4)
    target = new_key()
    others = [new_key(tenant) for tenant in ("acme", "globex") for _ in range(10)]
    expected: list[int] = []
    last = {k: 0 for k in others}
    with anyio.fail_after(15):
        for round_ in range(6):
            for other in others:
                last[other] = await store.append(
                    record(other, 1 + 2 * round_), expected_last_seq=last[other], context=CTX
                )
            prev = expected[-1] if expected else 0
            expected.append(
                await store.append(
                    record(target, 1 + 2 * round_), expected_last_seq=prev, context=CTX
                )
            )
        read = await store.read(target)
        last_seq = await store.last_seq(target)
        consumers = await nc.jetstream().consumers_info(stream)
    assert [s.seq for s in read] == expected
    assert {s.record.key for s in read} == {target}
    assert last_seq == expected[-1]
    assert await store.last_seq(new_key()) == 0
    assert consumers == [], "reads must never create consumers"
    await store.aclose()


async def test_same_command_id_in_two_tenants_does_not_collide(nc: NATS, stream: str) -> None:
    """JetStream de-duplicates message ids stream-wide; they are scoped by subject, so
    one tenant reusing another's command id changes nothing for either."""
    store = JetStreamEventStore(nc, stream=stream)
    shared_id = uuid7()
    first = new_key()
    second = AggregateKey("globex", first.aggregate_type, first.aggregate_id)
    with anyio.fail_after(10):
        s1 = await store.append(record(first, 1, shared_id), expected_last_seq=0, context=CTX)
        s2 = await store.append(record(second, 1, shared_id), expected_last_seq=0, context=CTX)
        assert s2 > s1
        assert [r.seq for r in await store.read(first)] == [s1]
        assert [r.seq for r in await store.read(second)] == [s2]
    await store.aclose()


async def test_lost_publish_ack_is_retried_with_the_same_headers(
    nc: NATS, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish whose answer is lost is sent again unchanged: if the first one had landed,
    JetStream answers a conflict (DESIGN §4.3); if not, the retry appends it once."""
    store = JetStreamEventStore(nc, stream=stream, publish_attempts=3, retry_backoff_s=0)
    sent: list[dict[str, str]] = []
    real_publish = store._publisher.publish
    plan: list[str] = []

    async def flaky_publish(subject: str, payload: bytes, **kwargs: Any) -> Any:
        sent.append(dict(kwargs["headers"]))
        step = plan.pop(0) if plan else "deliver"
        if step == "drop-request":
            raise nats.errors.TimeoutError
        ack = await real_publish(subject, payload, **kwargs)
        if step == "drop-answer":
            raise nats.errors.TimeoutError
        return ack

    monkeypatch.setattr(store._publisher, "publish", flaky_publish)
    landed, lost = new_key(), new_key()
    with anyio.fail_after(10):
        plan[:] = ["drop-answer"]
        with pytest.raises(VersionConflictError):
            await store.append(record(landed, 1), expected_last_seq=0, context=CTX)
        assert len(await store.read(landed)) == 1
        assert sent[0] == sent[1]
        sent.clear()
        plan[:] = ["drop-request", "drop-request"]
        seq = await store.append(record(lost, 1), expected_last_seq=0, context=CTX)
        assert [s.seq for s in await store.read(lost)] == [seq]
    assert len(sent) == 3
    assert sent[0] == sent[1] == sent[2]
    await store.aclose()


async def test_stream_without_responders_is_backend_unavailable(nc: NATS) -> None:
    store = JetStreamEventStore(
        nc, stream="NO_SUCH_STREAM", request_timeout_s=0.5, publish_attempts=2, retry_backoff_s=0
    )
    key = new_key()
    with anyio.fail_after(10):
        with pytest.raises(BackendUnavailableError, match="may or may not"):
            await store.append(record(key, 1), expected_last_seq=0, context=CTX)
        with pytest.raises(BackendUnavailableError, match="no JetStream responder"):
            await store.read(key)
    await store.aclose()


async def test_server_down_is_backend_unavailable(
    nats_server: NatsServerProcess, connect_nats: Any
) -> None:
    async with connect_nats(nats_server.url) as client:
        await ensure_stream(client.jetstream(timeout=5), StreamPolicy())
        store = JetStreamEventStore(
            client, request_timeout_s=0.3, publish_attempts=2, retry_backoff_s=0.01
        )
        key = new_key()
        seq = await store.append(record(key, 1), expected_last_seq=0, context=CTX)
        nats_server.stop()
        with anyio.fail_after(10):
            with pytest.raises(BackendUnavailableError, match="not acknowledged after 2"):
                await store.append(record(key, 3), expected_last_seq=seq, context=CTX)
            with pytest.raises(BackendUnavailableError):
                await store.read(key)
            with pytest.raises(BackendUnavailableError):
                await store.read_at(key, seq)
            with pytest.raises(BackendUnavailableError):
                await store.last_seq(key)
        with contextlib.suppress(OSError):  # nats-py's close() flushes a dead socket
            await client.close()
        with pytest.raises(BackendUnavailableError, match="connection unusable"):
            await store.append(record(key, 3), expected_last_seq=seq, context=CTX)
        with pytest.raises(BackendUnavailableError):
            await store.read(key)


async def test_fallback_when_the_server_ignores_batch(nc: NATS) -> None:
    """A server without batch support answers one message without Nats-Num-Pending; the
    reader then continues one message per request. Played by a responder on core NATS."""
    stream = f"OLD_{uuid.uuid4().hex[:8]}"
    subject = "tenant.acme.aggregate.account.x"
    stored = {
        seq: (subject if seq % 2 else "tenant.acme.aggregate.account.y") for seq in range(1, 12)
    }
    requests: list[dict[str, Any]] = []

    async def old_server(msg: Msg) -> None:
        request = json.loads(msg.data)
        requests.append(request)
        match = [
            s
            for s in sorted(stored)
            if s >= request["seq"] and stored[s] == request["next_by_subj"]
        ]
        if not match:
            await nc.publish(msg.reply, b"", headers={"Status": "404"})
            return
        headers = {"Nats-Stream": stream, "Nats-Subject": subject, "Nats-Sequence": str(match[0])}
        await nc.publish(msg.reply, f"m{match[0]}".encode(), headers=headers)

    sub = await nc.subscribe(f"$JS.API.DIRECT.GET.{stream}", cb=old_server)
    client = DirectGetClient(nc, stream, timeout_s=2)
    with anyio.fail_after(10):
        messages = await client.read_subject(subject, 1, batch_size=100)
    await sub.unsubscribe()
    await client.aclose()
    assert [m.seq for m in messages] == [1, 3, 5, 7, 9, 11]
    assert [m.data for m in messages] == [b"m1", b"m3", b"m5", b"m7", b"m9", b"m11"]
    assert client.batch_supported is False
    assert "batch" in requests[0]
    assert all("batch" not in r for r in requests[1:])
