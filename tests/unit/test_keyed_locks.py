"""``KeyedLocks``: one holder per aggregate key at a time, in arrival order; a key is
kept only while it is held."""

from __future__ import annotations

import asyncio
import uuid

import anyio
import anyio.lowlevel
import pytest

from aggregate.application.cache import KeyedLocks
from aggregate.domain.ids import AggregateKey


def key(n: int) -> AggregateKey:
    return AggregateKey("acme", "bank-account", uuid.UUID(int=n))


@pytest.mark.trio
async def test_same_key_serialises_and_other_keys_do_not_wait() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    first_inside = anyio.Event()
    release_first = anyio.Event()

    async def first() -> None:
        async with locks.hold(key(1)):
            order.append("first in")
            first_inside.set()
            await release_first.wait()
            order.append("first out")

    async def second() -> None:
        async with locks.hold(key(1)):
            order.append("second in")

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await first_inside.wait()
        tg.start_soon(second)
        with anyio.fail_after(5):
            async with locks.hold(key(2)):  # another key: not blocked by ``first``
                order.append("other key")
        release_first.set()
    assert order == ["first in", "other key", "first out", "second in"]
    assert len(locks) == 0


@pytest.mark.trio
async def test_waiters_enter_in_arrival_order_and_are_counted() -> None:
    locks = KeyedLocks()
    order: list[int] = []
    held = anyio.Event()
    release = anyio.Event()
    queued = [anyio.Event() for _ in range(4)]

    async def holder() -> None:
        async with locks.hold(key(1)):
            held.set()
            await release.wait()

    async def waiter(n: int) -> None:
        queued[n].set()
        async with locks.hold(key(1)):
            order.append(n)
            await anyio.lowlevel.checkpoint()  # still held: the next one waits

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await held.wait()
        for n in range(4):
            tg.start_soon(waiter, n)
            await queued[n].wait()
            await anyio.lowlevel.checkpoint()  # ``n`` is now waiting in the queue
        assert locks.waiting == 4
        assert len(locks) == 1
        release.set()
    assert order == [0, 1, 2, 3]
    assert locks.waiting == 0
    assert len(locks) == 0


@pytest.mark.trio
async def test_cancelled_waiter_leaves_no_trace() -> None:
    locks = KeyedLocks()
    held = anyio.Event()
    release = anyio.Event()

    async def holder() -> None:
        async with locks.hold(key(1)):
            held.set()
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await held.wait()
        with anyio.CancelScope() as scope:
            tg.start_soon(_cancel_soon, scope)
            async with locks.hold(key(1)):
                pytest.fail("the lock was held by another task")
        assert scope.cancelled_caught
        assert locks.waiting == 0
        release.set()
    with anyio.fail_after(5):  # free again: the cancelled waiter is not in its queue
        async with locks.hold(key(1)):
            assert locks.waiting == 0
            assert len(locks) == 1
    assert len(locks) == 0


async def _cancel_soon(scope: anyio.CancelScope) -> None:
    scope.cancel()


def test_a_key_handed_over_as_its_waiter_is_cancelled_goes_to_the_next() -> None:
    """On the island, grpclib cancels a handler natively (deadline, client reset), and
    asyncio delivers that even to a wait that has just been ended: the cancelled waiter
    was given the key, and must pass it on rather than keep it."""

    async def main() -> list[str]:
        locks = KeyedLocks()
        order: list[str] = []

        async def first() -> None:
            try:
                async with locks.hold(key(1)):
                    order.append("first")
            except asyncio.CancelledError:
                order.append("first cancelled")
                raise

        async def second() -> None:
            async with locks.hold(key(1)):
                order.append("second")

        holding = locks.hold(key(1))
        await holding.__aenter__()
        first_task = asyncio.create_task(first())
        second_task = asyncio.create_task(second())
        await asyncio.sleep(0)  # one turn: both tasks run to their wait, in order
        assert locks.waiting == 2
        await holding.__aexit__(None, None, None)  # the key is the first waiter's now
        first_task.cancel()
        await asyncio.wait_for(asyncio.gather(first_task, second_task, return_exceptions=True), 5)
        assert first_task.cancelled()
        assert len(locks) == 0
        assert locks.waiting == 0
        return order

    assert asyncio.run(main()) == ["first cancelled", "second"]
