"""Starlark programs in worker processes (``process`` isolation), under asyncio and Trio:
budgets that only a separate process can enforce, recovery, cancellation, concurrency."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from aggregate.domain.errors import (
    InvalidArgumentError,
    ProgramCompileError,
    ProgramError,
    ProgramLimitError,
)
from aggregate.domain.manifest import ProgramSource
from aggregate.programs.base import (
    MAX_REJECTION_REASON_BYTES,
    Accepted,
    ProgramLimits,
    Rejected,
)
from aggregate.programs.pool import WorkerPool, open_worker_pool
from aggregate.programs.starlark_program import StarlarkProcessProgram

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


RUNAWAY = """
def decide(state, command):
    kind = command["type"]
    if kind == "Loop":
        t = 0
        for a in range(1000000000):
            for b in range(1000000000):
                t += 1
    if kind == "BigInt":
        x = 7
        for i in range(64):
            x = x * x
    if kind == "Bomb":
        x = [0] * 2000000000
    if kind == "Crash":
        return state["missing"]
    if kind == "Refuse":
        return reject("no")
    if kind == "Shout":
        return reject("r" * 1000000)
    return [{"type": "Counted", "by": command.get("by", 1)}]

def apply(state, event):
    return dict(state, count = state.get("count", 0) + event["by"])
"""

LIMITS = ProgramLimits(
    pool_size=1,
    soft_timeout_seconds=0.3,
    hard_timeout_seconds=1.0,
    max_memory_bytes=256 * 1024 * 1024,
    max_input_depth=16,
)


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    async with WorkerPool(LIMITS) as opened:
        yield opened


def runaway(pool: WorkerPool, text: str = RUNAWAY) -> StarlarkProcessProgram:
    source = ProgramSource(text, "runaway.star")
    return StarlarkProcessProgram("runaway", source, source, pool)


async def assert_serves(program: StarlarkProcessProgram) -> None:
    with anyio.fail_after(30):
        decision = await program.decide({"count": 1}, {"type": "Count", "by": 2})
    assert decision == Accepted([{"type": "Counted", "by": 2}], {"count": 3})


async def test_decide_and_apply_run_in_a_worker(pool: WorkerPool) -> None:
    program = runaway(pool)
    await assert_serves(program)
    assert await program.decide({}, {"type": "Refuse"}) == Rejected("no")
    shout = await program.decide({}, {"type": "Shout"})
    assert isinstance(shout, Rejected)
    assert shout.reason == "r" * (MAX_REJECTION_REASON_BYTES - 18) + "…(1000000 chars)"
    events = [{"type": "Counted", "by": 1}] * 10_000
    with anyio.fail_after(30):
        assert await program.apply({"count": 0}, events) == {"count": 10_000}
    assert pool.spawned == 1


@pytest.mark.parametrize("kind", ["Loop", "BigInt", "Bomb"])
async def test_runaway_program_is_stopped_and_the_pool_keeps_serving(
    pool: WorkerPool, kind: str
) -> None:
    program = runaway(pool)
    await assert_serves(program)
    first = pool.worker_pids
    with anyio.fail_after(30), pytest.raises(ProgramLimitError) as caught:
        await program.decide({}, {"type": kind})
    assert caught.value.message.startswith("runaway: ")
    await assert_serves(program)
    if kind == "Loop":  # the soft deadline stops it inside the interpreter
        assert "soft_timeout_seconds" in caught.value.message
        assert pool.worker_pids == first
    elif kind == "Bomb":  # the worker dies of its memory limit and is replaced
        assert "memory" in caught.value.message
        assert pool.spawned == 2
        assert pool.worker_pids != first
    else:  # one multiplication may outlast the hard deadline (killed) or the memory
        # limit (died), or end just past the soft deadline (stopped between operations)
        assert any(
            reason in caught.value.message
            for reason in ("hard_timeout_seconds", "max_memory_bytes", "soft_timeout_seconds")
        )


async def test_memory_bomb_reports_the_allocation_failure(pool: WorkerPool) -> None:
    with anyio.fail_after(30), pytest.raises(ProgramLimitError) as caught:
        await runaway(pool).decide({}, {"type": "Bomb"})
    assert "max_memory_bytes=268435456" in caught.value.message
    assert "killed by SIGABRT: memory allocation of 16000000000 bytes failed" in (
        caught.value.message
    )


async def test_runtime_and_compile_errors_cross_the_process_boundary(pool: WorkerPool) -> None:
    with pytest.raises(ProgramError) as caught:
        await runaway(pool).decide({}, {"type": "Crash"})
    assert (caught.value.program, caught.value.line, caught.value.column) == ("runaway", 16, 16)
    assert caught.value.origin == "runaway.star"
    broken = runaway(pool, "def decide(state, command):\n    return [}\n")
    with pytest.raises(ProgramCompileError) as compile_error:
        await broken.check()
    assert (compile_error.value.line, compile_error.value.column) == (2, 13)
    assert compile_error.value.program == "runaway"
    with pytest.raises(ProgramCompileError):
        await broken.decide({}, {"type": "Count"})
    await assert_serves(runaway(pool))


async def test_deep_input_is_refused_before_it_is_sent(pool: WorkerPool) -> None:
    deep: dict[str, object] = {}
    for _ in range(40):
        deep = {"x": deep}
    with pytest.raises(InvalidArgumentError, match=r"nested deeper than 16"):
        await runaway(pool).decide({}, {"type": "Count", "deep": deep})
    with pytest.raises(ProgramError, match=r"state.*nested deeper than 16"):
        await runaway(pool).apply({"deep": deep}, [{"type": "Counted", "by": 1}])
    with pytest.raises(InvalidArgumentError, match=r"not plain JSON"):
        await runaway(pool).decide({}, {"type": "Count", "by": float("nan")})
    assert pool.spawned == 1


async def test_cancelling_a_call_kills_its_worker_and_the_pool_recovers() -> None:
    slow = ProgramLimits(
        pool_size=1, soft_timeout_seconds=20, hard_timeout_seconds=30, max_input_depth=16
    )
    async with open_worker_pool(slow) as pool:
        program = runaway(pool)
        await assert_serves(program)
        first = pool.worker_pids
        with anyio.move_on_after(0.3) as scope:
            await program.decide({}, {"type": "Loop"})
        assert scope.cancelled_caught
        await assert_serves(program)
        assert pool.spawned == 2
        assert pool.worker_pids != first


async def test_cancelling_a_call_that_waits_for_a_worker_kills_nothing() -> None:
    async with open_worker_pool(LIMITS) as pool:
        program = runaway(pool)
        await assert_serves(program)
        outcome: list[str] = []

        async def hog() -> None:
            try:
                await program.decide({}, {"type": "Loop"})
            except ProgramLimitError:
                outcome.append("stopped at the soft deadline")

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hog)
                while pool.idle_workers:  # wait until hog holds the only worker
                    await anyio.lowlevel.checkpoint()
                with anyio.move_on_after(0.05) as scope:
                    await program.decide({}, {"type": "Count"})
                assert scope.cancelled_caught
        assert outcome == ["stopped at the soft deadline"]
        await assert_serves(program)
        assert pool.spawned == 1


async def test_concurrent_calls_share_the_workers() -> None:
    async with open_worker_pool(ProgramLimits(pool_size=2)) as pool:
        program = runaway(pool)
        results: dict[int, object] = {}

        async def one(n: int) -> None:
            results[n] = await program.decide({"count": n}, {"type": "Count", "by": n})

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(12):
                    tg.start_soon(one, n)
        assert results == {
            n: Accepted([{"type": "Counted", "by": n}], {"count": 2 * n}) for n in range(12)
        }
        assert pool.spawned == 2


async def test_a_worker_missing_a_text_gets_it_resent(pool: WorkerPool) -> None:
    program = runaway(pool)
    # Pretend the worker already compiled the text (as after a cache eviction there).
    for worker in pool._workers:
        worker.loaded.update(program._sources)
    await assert_serves(program)


async def test_a_closed_pool_refuses_calls() -> None:
    async with WorkerPool(LIMITS) as pool:
        program = runaway(pool)
        await assert_serves(program)
    assert pool.worker_pids == []
    with pytest.raises(ProgramError, match=r"pool is closed"):
        await program.decide({}, {"type": "Count"})


async def test_a_worker_that_cannot_start_is_reported() -> None:
    with pytest.raises(ProgramError, match=r"did not start"):
        async with WorkerPool(LIMITS, python="/bin/false"):
            pass
