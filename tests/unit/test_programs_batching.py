"""Calls that queue for busy workers are sent in batches: each keeps its own answer, its
own error and its own fate when the batch loses its worker (asyncio and Trio)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aggregate.domain.errors import ProgramError, ProgramLimitError
from aggregate.domain.manifest import ProgramSource
from aggregate.programs.base import Accepted, ProgramLimits, Rejected
from aggregate.programs.pool import WorkerPool
from aggregate.programs.starlark_program import StarlarkProcessProgram
from tests.unit.test_programs_pool import RUNAWAY

pytestmark = pytest.mark.anyio

LIMITS = ProgramLimits(
    pool_size=1,
    soft_timeout_seconds=2.0,
    hard_timeout_seconds=10.0,
    max_memory_bytes=256 * 1024 * 1024,
    max_input_depth=16,
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def program(pool: WorkerPool) -> StarlarkProcessProgram:
    source = ProgramSource(RUNAWAY, "runaway.star")
    return StarlarkProcessProgram("runaway", source, source, pool)


async def queued_then_released(
    pool: WorkerPool, commands: list[dict[str, Any]], *, cancel: int | None = None
) -> dict[int, object]:
    """Run one decide per command while the only worker is held, so every call queues;
    then free the worker. Returns each call's decision or error (by index)."""
    prog = program(pool)
    await prog.decide({}, {"type": "Count"})  # compiled, and the worker idle again
    held = pool._queue.idle.pop()
    results: dict[int, object] = {}
    scopes: dict[int, anyio.CancelScope] = {}

    async def one(n: int) -> None:
        with anyio.CancelScope() as scope:
            scopes[n] = scope
            try:
                results[n] = await prog.decide({"count": n}, commands[n])
            except (ProgramError, ProgramLimitError) as exc:
                results[n] = exc
            return
        results[n] = "cancelled"

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for n in range(len(commands)):
                tg.start_soon(one, n)
            while len(pool._queue) < len(commands):
                await anyio.lowlevel.checkpoint()
            if cancel is not None:
                scopes[cancel].cancel()
            pool._release(held)
    return results


async def test_queued_calls_share_one_round_trip_and_keep_their_own_answers() -> None:
    commands: list[dict[str, Any]] = [{"type": "Count", "by": n} for n in range(8)]
    commands[3] = {"type": "Crash"}
    commands[5] = {"type": "Refuse"}
    async with WorkerPool(LIMITS) as pool:
        results = await queued_then_released(pool, commands)
        assert pool.batches == 1
        assert pool.spawned == 1
    for n in (0, 1, 2, 4, 6, 7):
        assert results[n] == Accepted([{"type": "Counted", "by": n}], {"count": 2 * n})
    assert isinstance(results[3], ProgramError)
    assert "missing" in results[3].message
    assert results[5] == Rejected("no")


async def test_a_batch_never_holds_more_than_its_limit() -> None:
    commands: list[dict[str, Any]] = [{"type": "Count", "by": n} for n in range(7)]
    limits = ProgramLimits(**{**LIMITS.to_json(), "max_batch_calls": 3})
    async with WorkerPool(limits) as pool:
        results = await queued_then_released(pool, commands)
        assert pool.batches == 2  # 3 + 3, then the last one alone
    assert results == {
        n: Accepted([{"type": "Counted", "by": n}], {"count": 2 * n}) for n in range(7)
    }


async def test_one_batch_call_limit_sends_every_call_alone() -> None:
    commands: list[dict[str, Any]] = [{"type": "Count", "by": n} for n in range(4)]
    limits = ProgramLimits(**{**LIMITS.to_json(), "max_batch_calls": 1})
    async with WorkerPool(limits) as pool:
        results = await queued_then_released(pool, commands)
        assert pool.batches == 0
    assert results == {
        n: Accepted([{"type": "Counted", "by": n}], {"count": 2 * n}) for n in range(4)
    }


async def test_a_call_that_kills_the_worker_fails_alone_and_the_others_are_answered() -> None:
    commands: list[dict[str, Any]] = [{"type": "Count", "by": n} for n in range(5)]
    commands[2] = {"type": "Bomb"}  # exhausts the worker's memory: the process dies
    async with WorkerPool(LIMITS) as pool:
        results = await queued_then_released(pool, commands)
        with anyio.fail_after(30):
            decision = await program(pool).decide({"count": 1}, {"type": "Count"})
        assert decision == Accepted([{"type": "Counted", "by": 1}], {"count": 2})
        # the batch's worker, then the bomb's own, were replaced (by the time a call needs it)
        assert pool.spawned >= 3
    for n in (0, 1, 3, 4):
        assert results[n] == Accepted([{"type": "Counted", "by": n}], {"count": 2 * n})
    assert isinstance(results[2], ProgramLimitError)


async def test_a_cancelled_call_leaves_the_batch_and_the_others_are_answered() -> None:
    commands: list[dict[str, Any]] = [{"type": "Count", "by": n} for n in range(4)]
    async with WorkerPool(LIMITS) as pool:
        results = await queued_then_released(pool, commands, cancel=1)
        assert pool.spawned == 1
    assert results[1] == "cancelled"
    for n in (0, 2, 3):
        assert results[n] == Accepted([{"type": "Counted", "by": n}], {"count": 2 * n})
