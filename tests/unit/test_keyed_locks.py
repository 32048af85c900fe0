"""``KeyedLocks``: one lock per aggregate key, dropped when unused, lock objects reused."""

from __future__ import annotations

import uuid

import anyio
import anyio.lowlevel
import pytest

from aggregate.application.cache import KeyedLocks
from aggregate.domain.ids import AggregateKey

pytestmark = pytest.mark.trio


def key(n: int) -> AggregateKey:
    return AggregateKey("acme", "bank-account", uuid.UUID(int=n))


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


async def test_released_locks_are_reused_and_still_exclude() -> None:
    locks = KeyedLocks()
    async with locks.hold(key(1)):
        pass
    assert len(locks) == 0
    assert len(locks._free) == 1
    reused = locks._free[0]
    inside = 0
    peak = 0
    seen: list[bool] = []

    async def user() -> None:
        nonlocal inside, peak
        async with locks.hold(key(3)):
            seen.append(locks._locks[key(3)][0] is reused)
            inside += 1
            peak = max(peak, inside)
            await anyio.lowlevel.checkpoint()
            inside -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(user)
    assert seen == [True] * 5
    assert peak == 1
    assert len(locks) == 0


async def test_cancelled_waiter_leaves_no_trace_and_the_free_list_is_bounded() -> None:
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
        with anyio.move_on_after(0.01):
            async with locks.hold(key(1)):
                pytest.fail("the lock was held by another task")
        release.set()
    assert len(locks) == 0

    total = KeyedLocks.FREE_LIST + 10
    holding = 0
    all_in = anyio.Event()
    gate = anyio.Event()

    async def hold_until_gate(n: int) -> None:
        nonlocal holding
        async with locks.hold(key(n)):
            holding += 1
            if holding == total:
                all_in.set()
            await gate.wait()

    async with anyio.create_task_group() as tg:
        for n in range(total):
            tg.start_soon(hold_until_gate, n)
        await all_in.wait()  # ``total`` distinct locks exist at once
        gate.set()
    assert len(locks) == 0
    assert len(locks._free) == KeyedLocks.FREE_LIST
