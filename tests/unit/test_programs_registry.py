"""Building specs from a manifest, eager checks, and the hot-reloadable registry."""

from __future__ import annotations

import dataclasses

import pytest

from aggregate.config.manifest import example_manifest_path, load_manifest
from aggregate.domain.errors import ConfigError, ProgramCompileError, UnknownAggregateTypeError
from aggregate.domain.manifest import (
    ANY_TYPE,
    AggregateTypeManifest,
    Isolation,
    Language,
    Manifest,
    ProgramSource,
)
from aggregate.programs.base import Accepted, ProgramLimits
from aggregate.programs.pool import WorkerPool
from aggregate.programs.python_program import PythonProgram
from aggregate.programs.registry import (
    ProgramRegistry,
    build_specs,
    check_manifest,
    check_specs,
    program_version,
)
from aggregate.programs.starlark_program import StarlarkInlineProgram, StarlarkProcessProgram

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def counter(step: int) -> str:
    return (
        "def decide(state, command):\n"
        f'    return [{{"type": "Counted", "by": {step}}}]\n'
        "def apply(state, event):\n"
        '    return dict(state, n = state.get("n", 0) + event["by"])\n'
    )


def manifest(text: str, isolation: Isolation = Isolation.INLINE, name: str = "counter") -> Manifest:
    source = ProgramSource(text, f"{name}.star")
    spec = AggregateTypeManifest(
        name=name, decide=source, apply=source, isolation=isolation, initial_state={"n": 0}
    )
    return Manifest(types={name: spec})


async def test_build_specs_picks_the_runtime_per_type() -> None:
    bank = load_manifest(example_manifest_path("bank")).types["bank-account"]
    python = AggregateTypeManifest(
        name="bank-py",
        decide=ProgramSource("aggregate.examples.bank.python_program:decide", "x"),
        apply=ProgramSource("aggregate.examples.bank.python_program:apply", "x"),
        language=Language.PYTHON,
    )
    types = {"bank-account": bank, "bank-py": python, **manifest(counter(1)).types}
    async with WorkerPool(ProgramLimits(pool_size=1)) as pool:
        specs = build_specs(Manifest(types=types), pool=pool)
        await check_specs(specs)
    assert isinstance(specs["bank-account"].program, StarlarkProcessProgram)
    assert isinstance(specs["bank-py"].program, PythonProgram)
    assert isinstance(specs["counter"].program, StarlarkInlineProgram)
    assert specs["counter"].initial_state == {"n": 0}
    assert specs["counter"].program.name == "counter"


def test_process_isolation_needs_a_pool() -> None:
    with pytest.raises(ConfigError, match=r"counter runs its programs with isolation: process"):
        build_specs(manifest(counter(1), Isolation.PROCESS))


async def test_check_manifest_compiles_process_programs_in_a_worker() -> None:
    broken = "def decide(state, command):\n    return [}\n"
    with pytest.raises(ProgramCompileError) as caught:
        await check_manifest(manifest(broken, Isolation.PROCESS))
    assert caught.value.program == "counter"
    assert caught.value.origin == "counter.star"
    assert (caught.value.line, caught.value.column) == (2, 13)
    with pytest.raises(ProgramCompileError, match=r"counter.star:2:13"):
        await check_manifest(manifest(broken, Isolation.INLINE))
    specs = await check_manifest(load_manifest(example_manifest_path("billing")))
    assert list(specs) == ["billing-account"]


async def test_registry_lookup_and_hot_reload_keep_in_flight_specs() -> None:
    registry = ProgramRegistry(build_specs(manifest(counter(1))))
    assert registry.names() == ["counter"]
    assert "counter" in registry
    with pytest.raises(UnknownAggregateTypeError, match=r"'nope' is not configured.*counter"):
        registry.get("nope")
    held = registry.get("counter")  # a command in flight holds its spec
    registry.replace(
        {**build_specs(manifest(counter(10))), **build_specs(manifest(counter(1), name="other"))}
    )
    assert registry.names() == ["counter", "other"]
    assert await held.program.decide({"n": 0}, {"type": "Count"}) == Accepted(
        [{"type": "Counted", "by": 1}], {"n": 1}
    )
    fresh = registry.get("counter")
    assert await fresh.program.decide({"n": 0}, {"type": "Count"}) == Accepted(
        [{"type": "Counted", "by": 10}], {"n": 10}
    )
    with pytest.raises(UnknownAggregateTypeError, match=r"configured types: none"):
        ProgramRegistry().get("counter")


def test_programs_for_every_type_serve_any_name_and_named_types_come_first() -> None:
    everything = build_specs(manifest(counter(1), name=ANY_TYPE))
    registry = ProgramRegistry(everything)
    assert registry.get("Account") is everything[ANY_TYPE]
    assert registry.get("bank-account") is everything[ANY_TYPE]
    named = build_specs(manifest(counter(5), name="ledger"))
    registry.replace({**everything, **named})
    assert registry.get("ledger") is named["ledger"]
    assert registry.get("Account") is everything[ANY_TYPE]


def test_program_version_is_the_hash_of_decide_and_apply() -> None:
    one = manifest(counter(1)).types["counter"]
    same = manifest(counter(1), name="elsewhere").types["elsewhere"]
    other = manifest(counter(2)).types["counter"]
    assert program_version(one) == program_version(same)  # the name is not part of it
    assert program_version(one) != program_version(other)
    assert len(program_version(one)) == 16
    int(program_version(one), 16)
    new_apply = dataclasses.replace(one, apply=ProgramSource(counter(1) + "\n", "x"))
    assert program_version(new_apply) != program_version(one)
    assert build_specs(manifest(counter(1)))["counter"].version == program_version(one)
