"""Trusted Python callables as programs: references, private copies, checked results."""

from __future__ import annotations

import copy
from typing import Any

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
from aggregate.programs.python_program import PythonProgram

pytestmark = pytest.mark.anyio
HERE = __name__


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def decide(state: dict[str, Any], command: dict[str, Any]) -> Any:
    kind = command["type"]
    if kind == "Mutate":
        state["items"].append("changed")
        command["type"] = "changed"
        return [{"type": "Touched", "items": state["items"]}]
    if kind == "Refuse":
        return Rejected("not today")
    if kind == "Crash":
        return state["missing"]
    if kind == "Garbage":
        return {"type": "Touched"}
    if kind == "Set":
        return [{"type": "Touched", "items": {1, 2}}]
    if kind == "Recurse":
        return decide(state, command)
    if kind == "Shout":
        return Rejected("é" * 1_000_000)
    return [{"type": "Touched", "items": []}]


def apply(state: dict[str, Any], event: dict[str, Any]) -> Any:
    if event["type"] == "Touched":
        state["touched"] = state.get("touched", 0) + 1
        state["last"] = event
        return state
    return "not a dict"


class Namespace:
    @staticmethod
    def decide(state: dict[str, Any], command: dict[str, Any]) -> Any:
        return []


def program(decide_ref: str = f"{HERE}:decide", apply_ref: str = f"{HERE}:apply") -> PythonProgram:
    return PythonProgram(
        "py",
        ProgramSource(decide_ref, "manifest key decide"),
        ProgramSource(apply_ref, "manifest key apply"),
        ProgramLimits(max_input_depth=8),
    )


async def test_callables_get_private_copies_and_results_are_detached() -> None:
    state = {"items": ["a"]}
    command = {"type": "Mutate"}
    before = copy.deepcopy((state, command))
    decision = await program().decide(state, command)
    assert (state, command) == before
    assert isinstance(decision, Accepted)
    assert decision.events == [{"type": "Touched", "items": ["a", "changed"]}]
    assert decision.state == {"items": ["a"], "touched": 1, "last": decision.events[0]}
    assert decision.state["last"] is not decision.events[0]


async def test_rejection_and_fold() -> None:
    assert await program().decide({}, {"type": "Refuse"}) == Rejected("not today")


async def test_a_huge_rejection_reason_is_cut() -> None:
    decision = await program().decide({}, {"type": "Shout"})
    assert isinstance(decision, Rejected)
    assert len(decision.reason.encode()) <= MAX_REJECTION_REASON_BYTES
    assert decision.reason == "é" * 503 + "…(1000000 chars)"
    events = [{"type": "Touched"}] * 3
    assert (await program().apply({}, events))["touched"] == 3
    assert events == [{"type": "Touched"}] * 3


async def test_an_exception_names_the_function_and_line() -> None:
    with pytest.raises(ProgramError) as caught:
        await program().decide({}, {"type": "Crash"})
    assert caught.value.program == "py"
    assert caught.value.line == decide.__code__.co_firstlineno + 9
    assert "KeyError" in caught.value.message


@pytest.mark.parametrize(
    ("kind", "complaint"),
    [("Garbage", r"returned dict"), ("Set", r"set is not a JSON value")],
)
async def test_malformed_results_are_program_errors(kind: str, complaint: str) -> None:
    with pytest.raises(ProgramError, match=complaint):
        await program().decide({}, {"type": kind})


async def test_apply_must_return_a_dict() -> None:
    with pytest.raises(ProgramError, match=r"apply .* returned str"):
        await program().apply({}, [{"type": "Other"}])


async def test_recursion_is_a_limit_error() -> None:
    with pytest.raises(ProgramLimitError):
        await program().decide({}, {"type": "Recurse"})


async def test_inputs_are_checked() -> None:
    deep: dict[str, Any] = {}
    for _ in range(10):
        deep = {"x": deep}
    with pytest.raises(InvalidArgumentError, match=r"nested deeper than 8"):
        await program().decide({}, {"type": "Ok", "deep": deep})
    with pytest.raises(ProgramError, match=r"nan is not a finite number"):
        await program().decide({"bad": float("nan")}, {"type": "Ok"})


async def test_dotted_attributes_resolve() -> None:
    assert await program(f"{HERE}:Namespace.decide").decide({}, {"type": "X"}) == Accepted([], {})


@pytest.mark.parametrize(
    ("reference", "complaint"),
    [
        ("no_colon_here", r"is not a 'package.module:function' reference"),
        ("aggregate.no_such_module:decide", r"cannot import aggregate.no_such_module"),
        (f"{HERE}:no_such_function", r"is not a function"),
        (f"{HERE}:HERE", r"is not a function"),
    ],
)
def test_bad_references_are_compile_errors(reference: str, complaint: str) -> None:
    with pytest.raises(ProgramCompileError, match=complaint) as caught:
        program(decide_ref=reference)
    assert caught.value.program == "py"
    assert caught.value.origin == "manifest key decide"
