"""Compiling within the program limits: every Starlark program, ``inline`` ones too, is
compiled in a worker process first, and a text that cannot be compiled there is refused
with the type, the text, the limit it hit and its setting. ``aggregate check`` warns about
``inline`` types."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from aggregate import cli
from aggregate.config.settings import env_name, settable_fields
from aggregate.domain.errors import ConfigError, ProgramCompileError
from aggregate.domain.manifest import (
    AggregateTypeManifest,
    Isolation,
    Language,
    Manifest,
    ProgramSource,
)
from aggregate.programs.base import LIMIT_SETTINGS, ProgramLimits
from aggregate.programs.pool import WorkerPool, WorkerTimeoutError
from aggregate.programs.registry import check_manifest, isolation_warnings
from aggregate.programs.starlark_program import (
    StarlarkInlineProgram,
    StarlarkProcessProgram,
    _compile_limit_error,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

LIMITS = ProgramLimits(
    pool_size=1,
    soft_timeout_seconds=1.0,
    hard_timeout_seconds=10.0,
    max_memory_bytes=256 * 1024 * 1024,
)
APPLY = "def apply(state, event):\n    return state\n"
# Never called, but the compiler folds each constant: 400 MB and 480 MB, past 256 MiB.
STRING_FOLD = 'def never():\n    return "x" * 400000000\n'
TUPLE_FOLD = "def never():\n    return (0,) * 60000000\n"
DECIDE = "def decide(state, command):\n    return []\n"


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def one_type(
    decide: str, isolation: Isolation = Isolation.PROCESS, *, name: str = "bomb"
) -> Manifest:
    spec = AggregateTypeManifest(
        name=name,
        decide=ProgramSource(decide, f"{name}/decide.star"),
        apply=ProgramSource(APPLY, f"{name}/apply.star"),
        isolation=isolation,
    )
    return Manifest(types={name: spec})


@pytest.mark.parametrize("isolation", [Isolation.PROCESS, Isolation.INLINE])
@pytest.mark.parametrize("fold", [STRING_FOLD, TUPLE_FOLD], ids=["string", "tuple"])
async def test_a_constant_too_big_for_the_worker_is_refused_while_compiling(
    isolation: Isolation, fold: str
) -> None:
    with pytest.raises(ProgramCompileError) as caught:
        await check_manifest(one_type(fold + DECIDE, isolation), limits=LIMITS)
    error = caught.value
    assert isinstance(error, ConfigError)  # the configuration is refused
    assert (error.program, error.origin) == ("bomb", "bomb/decide.star")
    message = error.message
    assert message.startswith("aggregate type bomb: bomb/decide.star does not compile within")
    assert "while compiling, the program worker hit its address-space limit of 256 MiB" in message
    assert "max_memory_bytes, setting AGGREGATE_PROGRAM_MAX_MEMORY_MB" in message
    assert "memory allocation of" in message
    assert "\n" not in message


async def test_a_text_that_crashes_the_compiler_is_refused_naming_the_crash() -> None:
    nested = "x = " + "[" * 20000 + "]" * 20000 + "\n" + DECIDE
    with pytest.raises(ProgramCompileError) as caught:
        await check_manifest(one_type(nested), limits=LIMITS)
    assert "bomb/decide.star does not compile within the program limits" in caught.value.message
    assert "while compiling, the program worker crashed: killed by SIG" in caught.value.message


def test_compiling_past_the_hard_timeout_names_the_limit_and_its_setting() -> None:
    timeout = WorkerTimeoutError("bomb: ran past the hard time limit", time_limit=5.0)
    error = _compile_limit_error(timeout, "bomb", "bomb/decide.star", LIMITS)
    assert error.message == (
        "aggregate type bomb: bomb/decide.star does not compile within the program limits: "
        "compiling ran past the hard time limit of 5s "
        "(hard_timeout_seconds, setting AGGREGATE_PROGRAM_HARD_TIMEOUT_MS)"
    )


def test_the_settings_named_for_limits_exist() -> None:
    names = {env_name(name) for name in settable_fields("env")}
    assert set(LIMIT_SETTINGS.values()) <= names


async def test_the_pool_keeps_serving_after_a_compile_killed_its_worker() -> None:
    async with WorkerPool(LIMITS) as pool:
        with pytest.raises(ProgramCompileError, match=r"address-space limit"):
            await check_manifest(one_type(STRING_FOLD + DECIDE), pool=pool)
        good = one_type(DECIDE, name="good").types["good"]
        program = StarlarkProcessProgram("good", good.decide, good.apply, pool)
        await program.check()
        decision = await program.decide({}, {"type": "Noop"})
    assert decision.state == {}  # type: ignore[union-attr]


async def test_inline_programs_that_compile_in_the_worker_are_built_in_process() -> None:
    specs = await check_manifest(one_type(DECIDE, Isolation.INLINE, name="fine"), limits=LIMITS)
    assert isinstance(specs["fine"].program, StarlarkInlineProgram)


def test_isolation_warnings_name_each_inline_starlark_type_once() -> None:
    python = AggregateTypeManifest(
        name="py",
        decide=ProgramSource("aggregate.examples.bank.python_program:decide", "x"),
        apply=ProgramSource("aggregate.examples.bank.python_program:apply", "x"),
        language=Language.PYTHON,
        isolation=Isolation.INLINE,
    )
    types = {
        **one_type(DECIDE, Isolation.INLINE, name="trusted").types,
        **one_type(DECIDE, Isolation.PROCESS, name="isolated").types,
        **one_type(DECIDE, Isolation.INLINE, name="also-trusted").types,
        "py": python,
    }
    warnings = isolation_warnings(Manifest(types=types))
    assert [w.split(" ")[2] for w in warnings] == ["also-trusted", "trusted"]
    assert all("aborts the whole service" in w for w in warnings)
    assert all("use isolation: process (the default)" in w for w in warnings)


def write_manifest(directory: Path, isolation: str | None) -> Path:
    (directory / "decide.star").write_text(DECIDE)
    (directory / "apply.star").write_text(APPLY)
    line = f"    isolation: {isolation}\n" if isolation else ""
    manifest = directory / "manifest.yaml"
    manifest.write_text(
        f"aggregate_types:\n  counter:\n{line}    decide: decide.star\n    apply: apply.star\n"
    )
    return manifest


def test_check_warns_loudly_about_an_inline_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGGREGATE_MANIFEST_PATH", str(write_manifest(tmp_path, "inline")))
    assert cli.main(["check"]) == cli.EXIT_OK
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["aggregate_types"] == {"counter": {"language": "starlark", "isolation": "inline"}}
    assert len(report["warnings"]) == 1
    assert (
        "aggregate type counter runs its Starlark programs with isolation: inline"
        in (report["warnings"][0])
    )
    lines = err.splitlines()
    assert lines == [f"aggregate check: WARNING: {report['warnings'][0]}"]


def test_check_is_quiet_about_the_default_process_isolation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGGREGATE_MANIFEST_PATH", str(write_manifest(tmp_path, None)))
    assert cli.main(["check"]) == cli.EXIT_OK
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["aggregate_types"]["counter"]["isolation"] == "process"
    assert (report["warnings"], err) == ([], "")


def test_check_refuses_a_program_that_cannot_compile_with_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path, "inline")
    (tmp_path / "decide.star").write_text('def never():\n    return "x" * 2000000000\n' + DECIDE)
    monkeypatch.setenv("AGGREGATE_MANIFEST_PATH", str(manifest))
    monkeypatch.setenv("AGGREGATE_PROGRAM_MAX_MEMORY_MB", "256")
    assert cli.main(["check"]) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith(
        "aggregate check: configuration error: aggregate type counter: "
        f"{tmp_path / 'decide.star'} does not compile within the program limits: while "
        "compiling, the program worker hit its address-space limit of 256 MiB "
        "(max_memory_bytes, setting AGGREGATE_PROGRAM_MAX_MEMORY_MB)"
    )
