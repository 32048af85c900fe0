"""Starlark programs in process (``inline``): compile cache, errors with positions,
rejections, output validation, input caps and budgets."""

from __future__ import annotations

import copy

import anyio
import anyio.lowlevel
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
from aggregate.programs.starlark_compile import CompileCache, source_key
from aggregate.programs.starlark_program import StarlarkInlineProgram

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


COUNTER = """
def decide(state, command):
    kind = command["type"]
    if kind == "Add":
        return [{"type": "Added", "n": command["n"]}]
    if kind == "Refuse":
        return reject("refused: " + command.get("why", "no reason"))
    if kind == "Crash":
        return state["missing"]
    if kind == "Fail":
        fail("deliberate failure")
    if kind == "Dict":
        return {"type": "Added"}
    if kind == "NoType":
        return [{"n": 1}]
    if kind == "IntKey":
        return [{"type": "Added", "n": {1: 2}}]
    if kind == "Inf":
        return [{"type": "Added", "n": float("inf")}]
    if kind == "Mutate":
        state["mutated"] = True
        command["mutated"] = True
        return []
    if kind == "Recurse":
        return decide(state, command)
    if kind == "Loop":
        t = 0
        for a in range(1000000000):
            for b in range(1000000000):
                t += 1
    if kind == "Spin":
        t = 0
        for a in range(command["n"]):
            t += 1
        return []
    if kind == "BadReject":
        return reject(42)
    if kind == "Nothing":
        return []
    return reject("unknown command " + kind)

def apply(state, event):
    if event["type"] == "Added":
        return dict(state, total = state.get("total", 0) + (event["n"] or 0))
    return None
"""

FAST = ProgramLimits(soft_timeout_seconds=0.2, hard_timeout_seconds=1.0, max_input_depth=8)


def program(
    text: str = COUNTER, *, apply_text: str | None = None, cache: CompileCache | None = None
) -> StarlarkInlineProgram:
    return StarlarkInlineProgram(
        "counter",
        ProgramSource(text, "counter/decide.star"),
        ProgramSource(apply_text if apply_text is not None else text, "counter/apply.star"),
        FAST,
        cache=cache if cache is not None else CompileCache(),
    )


async def test_decide_returns_events_and_the_state_after_them() -> None:
    decision = await program().decide({"total": 1}, {"type": "Add", "n": 2})
    assert decision == Accepted([{"type": "Added", "n": 2}], {"total": 3})


async def test_apply_folds_events_in_order() -> None:
    events = [{"type": "Added", "n": n} for n in range(1, 2501)]
    state = await program().apply({}, events)
    assert state == {"total": sum(range(1, 2501))}


async def test_reject_is_a_value_not_a_crash() -> None:
    decision = await program().decide({}, {"type": "Refuse", "why": "closed"})
    assert decision == Rejected("refused: closed")


async def test_compile_cache_hits_by_source_hash() -> None:
    cache = CompileCache()
    program(cache=cache)
    assert (cache.misses, len(cache)) == (1, 1)  # decide and apply are the same text
    program(cache=cache)
    assert cache.misses == 1
    assert cache.hits >= 3
    other = COUNTER + "\n# a comment changes the hash\n"
    program(other, cache=cache)
    assert cache.misses == 2
    assert cache.get(source_key(other)) is not None


async def test_syntax_error_names_program_line_and_column() -> None:
    broken = "def decide(state, command):\n    return [\n\ndef apply(state, event):\n"
    with pytest.raises(ProgramCompileError) as caught:
        program(broken, apply_text=COUNTER)
    error = caught.value
    assert error.program == "counter"
    assert error.origin == "counter/decide.star"
    assert (error.line, error.column) == (4, 1)
    assert "counter/decide.star:4:1" in error.message


async def test_undefined_name_in_top_level_code_is_a_compile_error() -> None:
    with pytest.raises(ProgramCompileError) as caught:
        program("X = undefined_thing + 1\n" + COUNTER)
    assert (caught.value.line, caught.value.column) == (1, 5)
    assert "undefined_thing" in caught.value.message


async def test_a_source_without_its_function_is_a_compile_error() -> None:
    with pytest.raises(ProgramCompileError, match=r"does not define the function apply"):
        program(COUNTER, apply_text="def decide(state, command):\n    return []\n")


async def test_runtime_error_names_line_and_column() -> None:
    with pytest.raises(ProgramError) as caught:
        await program().decide({}, {"type": "Crash"})
    error = caught.value
    assert not isinstance(error, ProgramCompileError)
    assert (error.program, error.line, error.column) == ("counter", 9, 16)
    assert 'Key `"missing"` was not found' in error.message
    assert "counter/decide.star:9:16" in error.message


async def test_fail_is_a_crash_with_its_line() -> None:
    with pytest.raises(ProgramError) as caught:
        await program().decide({}, {"type": "Fail"})
    assert caught.value.line == 11
    assert "deliberate failure" in caught.value.message


async def test_a_huge_rejection_reason_is_cut() -> None:
    decision = await program().decide({}, {"type": "Refuse", "why": "r" * 1_000_000})
    assert isinstance(decision, Rejected)
    assert len(decision.reason.encode()) <= MAX_REJECTION_REASON_BYTES
    assert decision.reason.startswith("refused: rrrrrrrr")
    assert decision.reason.endswith("…(1000009 chars)")


async def test_reject_needs_a_string_reason() -> None:
    with pytest.raises(ProgramError, match=r"non-empty string"):
        await program().decide({}, {"type": "BadReject"})


@pytest.mark.parametrize(
    ("kind", "complaint"),
    [
        ("Dict", r"returned dict .*expected a list of events"),
        ("NoType", r'event #0 .*non-empty string "type"'),
        ("IntKey", r"non-string key 1"),
    ],
)
async def test_decide_returning_garbage_is_a_program_error(kind: str, complaint: str) -> None:
    with pytest.raises(ProgramError, match=complaint) as caught:
        await program().decide({}, {"type": kind})
    assert caught.value.program == "counter"


async def test_apply_returning_a_non_dict_is_a_program_error() -> None:
    bad_apply = "def apply(state, event):\n    return [state]\n"
    with pytest.raises(ProgramError, match=r"apply \(counter/apply.star\) returned list"):
        await program(apply_text=bad_apply).decide({}, {"type": "Add", "n": 1})


async def test_infinity_comes_back_as_none() -> None:
    # A known sharp edge of the interpreter's value conversion (DESIGN §7).
    decision = await program().decide({}, {"type": "Inf"})
    assert decision == Accepted([{"type": "Added", "n": None}], {"total": 0})


async def test_inputs_are_never_mutated() -> None:
    state = {"total": 5, "nested": {"a": [1, 2]}}
    command = {"type": "Mutate"}
    before = copy.deepcopy((state, command))
    decision = await program().decide(state, command)
    assert (state, command) == before
    assert decision == Accepted([], state)
    assert isinstance(decision, Accepted)
    assert decision.state is not state


def nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


async def test_a_command_nested_too_deep_is_refused_before_the_program_runs() -> None:
    with pytest.raises(InvalidArgumentError, match=r"command.*nested deeper than 8 levels"):
        await program().decide({}, {"type": "Add", "n": nested(8)})
    # exactly at the limit is fine (the command itself is one level)
    decision = await program().decide({}, {"type": "Nothing", "n": nested(7)})
    assert decision == Accepted([], {})


async def test_a_state_nested_too_deep_is_a_program_error() -> None:
    with pytest.raises(ProgramError, match=r"state.*nested deeper than 8 levels"):
        await program().decide({"deep": nested(9)}, {"type": "Nothing"})
    with pytest.raises(ProgramError, match=r"event.*nested deeper"):
        await program().apply({}, [{"type": "Added", "n": 1, "deep": nested(9)}])


async def test_runaway_loop_stops_at_the_soft_deadline() -> None:
    with pytest.raises(ProgramLimitError, match=r"time budget of 0.2s.*stopped at line 29, column"):
        await program().decide({}, {"type": "Loop"})


async def test_each_call_gets_its_own_deadline() -> None:
    # One program, many calls: the evaluation options are reused, the deadline is not.
    counter = program()
    for _ in range(2):
        # The runaway call ends at its deadline, so that deadline is past when the next
        # call starts: the next call must run under a fresh one.
        with pytest.raises(ProgramLimitError, match=r"time budget of 0.2s"):
            await counter.decide({}, {"type": "Loop"})
        # A finite loop checks for cancellation as it goes: under the runaway call's
        # (past) deadline it would be cut off at once.
        assert await counter.decide({}, {"type": "Spin", "n": 20_000}) == Accepted([], {})


async def test_unbounded_recursion_hits_the_call_stack_budget() -> None:
    with pytest.raises(ProgramLimitError, match=r"call-stack budget of 100 frames"):
        await program().decide({}, {"type": "Recurse"})


async def test_top_level_code_runs_under_the_deadline() -> None:
    slow = "N = [x for x in range(1000000000) for y in range(1000000000)]\n" + COUNTER
    with pytest.raises(ProgramCompileError, match=r"time budget") as caught:
        program(slow)
    assert caught.value.line == 1


async def test_load_is_not_allowed() -> None:
    with pytest.raises(ProgramCompileError, match=r"load"):
        program('load("other.star", "x")\n' + COUNTER)


def test_limits_refuse_dangerous_values() -> None:
    from aggregate.domain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"max_callstack_size"):
        ProgramLimits(max_callstack_size=20000)
    with pytest.raises(ConfigError, match=r"soft_timeout_seconds"):
        ProgramLimits(soft_timeout_seconds=0)
    with pytest.raises(ConfigError, match=r"pool_size must be a positive integer"):
        ProgramLimits(pool_size=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"hard_timeout_seconds must be at least"):
        ProgramLimits(soft_timeout_seconds=3, hard_timeout_seconds=2)
    limits = ProgramLimits(pool_size=3)
    assert ProgramLimits.from_json(limits.to_json()) == limits


async def test_rehydration_folds_in_one_call_and_reports_a_bad_state() -> None:
    with pytest.raises(ProgramError, match=r"returned NoneType None for a 'Other' event"):
        await program().apply({}, [{"type": "Added", "n": 1}, {"type": "Other"}])
    crashing = "def apply(state, event):\n    return dict(state, n = state['n'] + 1)\n"
    with pytest.raises(ProgramError) as caught:
        await program(apply_text=crashing).apply({}, [{"type": "Added", "n": 1}])
    assert (caught.value.origin, caught.value.line, caught.value.column) == (
        "counter/apply.star",
        2,
        28,
    )


async def test_rehydration_has_a_budget_that_grows_with_the_batch() -> None:
    looping = (
        "def apply(state, event):\n"
        "    for a in range(1000000000):\n"
        "        for b in range(1000000000):\n"
        "            pass\n"
        "    return state\n"
    )
    events = [{"type": "Added", "n": 1}] * 20
    with pytest.raises(ProgramLimitError, match=r"apply ran past its time budget of 0.3s"):
        await program(apply_text=looping).apply({}, events)  # 0.2s + 20 x 5ms


SPIN_APPLY = """
def apply(state, event):
    t = 0
    for a in range(event["n"]):
        t += 1
    return dict(state, total = state.get("total", 0) + 1)
"""


async def test_decide_and_the_applies_of_its_events_share_one_deadline() -> None:
    # Each apply takes a fraction of the budget; fifty of them take several budgets.
    limits = ProgramLimits(soft_timeout_seconds=0.5, hard_timeout_seconds=1.0)
    fan_out = "def decide(state, command):\n    return [{'type': 'Spun', 'n': 1500000}] * 50\n"
    slow = StarlarkInlineProgram(
        "counter",
        ProgramSource(fan_out, "counter/decide.star"),
        ProgramSource(SPIN_APPLY, "counter/apply.star"),
        limits,
        cache=CompileCache(),
    )
    with pytest.raises(ProgramLimitError, match=r"apply ran past its time budget of 0.5s"):
        await slow.decide({}, {"type": "Fan"})


LONG = ProgramLimits(soft_timeout_seconds=60, hard_timeout_seconds=60)


def long_program() -> StarlarkInlineProgram:
    return StarlarkInlineProgram(
        "counter", ProgramSource(COUNTER, "counter/decide.star"), ProgramSource(COUNTER, "a"), LONG
    )


async def test_a_long_inline_step_leaves_the_event_loop_turning() -> None:
    # Twenty million steps: well past the 10 ms an inline step may hold the loop.
    counter = long_program()
    finished = anyio.Event()
    seen_running: list[bool] = []
    decisions: list[object] = []

    async def run() -> None:
        decisions.append(await counter.decide({"total": 1}, {"type": "Spin", "n": 20_000_000}))
        finished.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await anyio.lowlevel.checkpoint()  # the step starts, on the loop
        await anyio.lowlevel.checkpoint()  # the loop turns again while it runs
        seen_running.append(not finished.is_set())
    assert seen_running == [True]
    assert decisions == [Accepted([], {"total": 1})]


async def test_long_inline_steps_in_threads_answer_each_their_own() -> None:
    counter = long_program()
    results: dict[int, object] = {}

    async def spin(n: int) -> None:
        results[n] = await counter.decide({"total": n}, {"type": "Spin", "n": 3_000_000 + n})

    async def add(n: int) -> None:
        results[-n] = await counter.decide({"total": 0}, {"type": "Add", "n": n})

    async with anyio.create_task_group() as tg:
        for n in range(1, 4):
            tg.start_soon(spin, n)
            tg.start_soon(add, n)
    for n in range(1, 4):
        assert results[n] == Accepted([], {"total": n})
        assert results[-n] == Accepted([{"type": "Added", "n": n}], {"total": n})


async def test_a_rerun_in_a_thread_still_stops_at_the_soft_deadline() -> None:
    with pytest.raises(ProgramLimitError, match=r"time budget of 0.2s.*stopped at line 29, column"):
        await program().decide({}, {"type": "Loop"})
