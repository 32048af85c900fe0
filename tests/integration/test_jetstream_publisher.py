"""``AckedPublisher`` against a real nats-server: acknowledgements, refusals and timeouts
come back exactly as nats-py's ``JetStreamContext.publish`` reports them."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import anyio
import nats.errors
import nats.js.errors
import pytest

from aggregate.adapters.jetstream.publisher import AckedPublisher, MalformedAckError, parse_ack

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg


pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def subject(tail: str) -> str:
    return f"tenant.acme.aggregate.pub.{tail}-{uuid.uuid4().hex[:8]}"


async def test_acks_carry_the_sequence_and_the_duplicate_flag(
    shared_nc: NATS, event_stream: str
) -> None:
    publisher = AckedPublisher(shared_nc)
    one = subject("a")
    with anyio.fail_after(10):
        first = await publisher.publish(one, b"1", headers={"Nats-Msg-Id": "m-1"}, ack_wait_s=5)
        second = await publisher.publish(
            one,
            b"2",
            headers={"Nats-Msg-Id": "m-2", "Nats-Expected-Last-Subject-Sequence": str(first.seq)},
            ack_wait_s=5,
        )
        again = await publisher.publish(one, b"1", headers={"Nats-Msg-Id": "m-1"}, ack_wait_s=5)
        stored = await shared_nc.jetstream().get_msg(event_stream, second.seq)
    assert (first.duplicate, second.duplicate) == (False, False)
    assert second.seq == first.seq + 1
    assert (again.seq, again.duplicate) == (first.seq, True)
    assert stored.data == b"2"
    assert (stored.headers or {}).get("Nats-Msg-Id") == "m-2"
    assert publisher.waiting == 0
    await publisher.aclose()


async def test_a_wrong_expected_sequence_is_the_same_api_error_as_nats_py(
    shared_nc: NATS, event_stream: str
) -> None:
    publisher = AckedPublisher(shared_nc)
    one = subject("b")
    stale = {"Nats-Expected-Last-Subject-Sequence": "0"}
    with anyio.fail_after(10):
        await publisher.publish(one, b"x", headers=dict(stale), ack_wait_s=5)
        with pytest.raises(nats.js.errors.BadRequestError) as ours:
            await publisher.publish(one, b"y", headers=dict(stale), ack_wait_s=5)
        with pytest.raises(nats.js.errors.BadRequestError) as theirs:
            await shared_nc.jetstream().publish(one, b"y", headers=dict(stale))
    assert ours.value.err_code == theirs.value.err_code == 10071
    assert ours.value.description == theirs.value.description
    assert publisher.waiting == 0


async def test_no_stream_for_the_subject_is_no_stream_response(shared_nc: NATS) -> None:
    publisher = AckedPublisher(shared_nc)
    with anyio.fail_after(10), pytest.raises(nats.js.errors.NoStreamResponseError):
        await publisher.publish(f"nobody.{uuid.uuid4().hex}", b"x", headers={}, ack_wait_s=5)
    assert publisher.waiting == 0


async def test_no_ack_in_time_is_a_timeout_and_a_late_ack_is_dropped(shared_nc: NATS) -> None:
    # A plain subscriber takes the subject (so no "no responders") and answers late.
    target = f"slow.{uuid.uuid4().hex}"
    requests: asyncio.Queue[Msg] = asyncio.Queue()

    async def hold(msg: Msg) -> None:
        requests.put_nowait(msg)

    await shared_nc.subscribe(target, cb=hold)
    publisher = AckedPublisher(shared_nc)
    with anyio.fail_after(10):
        with pytest.raises(nats.errors.TimeoutError):
            await publisher.publish(target, b"x", headers={"k": "v"}, ack_wait_s=0.2)
        first = await requests.get()
        assert publisher.waiting == 0
        # The late answer goes nowhere; the next publish gets its own.
        await shared_nc.publish(first.reply, b'{"stream":"S","seq":99}')
        ack_next = asyncio.ensure_future(
            publisher.publish(target, b"y", headers={"k": "v"}, ack_wait_s=5)
        )
        second = await requests.get()
        await shared_nc.publish(second.reply, b'{"stream":"S","seq":100}')
        assert (await ack_next).seq == 100
    assert first.headers == {"k": "v"}


async def test_cancelled_publish_leaves_nothing_waiting(shared_nc: NATS) -> None:
    target = f"never.{uuid.uuid4().hex}"
    received = asyncio.Event()

    async def hold(msg: Msg) -> None:
        received.set()

    await shared_nc.subscribe(target, cb=hold)
    publisher = AckedPublisher(shared_nc)
    task = asyncio.ensure_future(publisher.publish(target, b"x", headers={}, ack_wait_s=30))
    with anyio.fail_after(10):
        await received.wait()
        assert publisher.waiting == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert publisher.waiting == 0


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"stream": "S"}', "no valid sequence"),
        (b'{"stream": "S", "seq": "7"}', "no valid sequence"),
        (b'{"error": "boom"}', "unreadable error"),
    ],
)
def test_an_unreadable_ack_is_malformed(body: bytes, problem: str) -> None:
    with pytest.raises(MalformedAckError, match=problem):
        parse_ack(body)


def test_ack_parsing() -> None:
    assert parse_ack(b'{"stream":"S","seq":5}').seq == 5
    assert parse_ack(b'{"stream":"S","seq":5,"duplicate":true}').duplicate is True
    with pytest.raises(nats.js.errors.ServiceUnavailableError):
        parse_ack(b'{"error":{"code":503,"err_code":10008,"description":"unavailable"}}')
