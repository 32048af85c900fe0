"""Turn a manifest into running programs, and look them up by aggregate type (DESIGN §7).

``build_specs`` makes one ``AggregateTypeSpec`` per manifest type: Starlark ``inline``
programs and Python callables are compiled/imported at once; ``process`` programs are
compiled in the workers (``check_specs`` does it eagerly, one worker per program).
``check_manifest`` (start-up and ``aggregate check``) first compiles every Starlark program
in a worker process, ``inline`` ones too: compiling a hostile text can exhaust memory or
crash the compiler, which must not happen to the service process.
``ProgramRegistry`` serves the handler's lookups and is hot-reloadable: ``replace`` swaps
the whole table at once, and a command keeps the spec it looked up until it finishes, so
in-flight commands run to the end on the programs they started with.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from aggregate.domain.errors import ConfigError, UnknownAggregateTypeError
from aggregate.domain.manifest import ANY_TYPE, Isolation, Language
from aggregate.programs.base import AggregateTypeSpec, ProgramLimits
from aggregate.programs.pool import WorkerPool
from aggregate.programs.python_program import PythonProgram
from aggregate.programs.starlark_compile import source_key
from aggregate.programs.starlark_program import (
    StarlarkInlineProgram,
    StarlarkProcessProgram,
    check_in_worker,
)
from aggregate.programs.values import json_copy

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aggregate.domain.manifest import AggregateTypeManifest, Manifest
    from aggregate.programs.base import AggregateProgram
    from aggregate.programs.pool import ProgramPool


def build_program(
    spec: AggregateTypeManifest, *, limits: ProgramLimits, pool: ProgramPool | None
) -> AggregateProgram:
    """The program for one manifest type.

    Python programs always run in the service process (whatever ``isolation`` says).

    Raises:
        ProgramCompileError: an inline Starlark program does not compile, or a Python
            reference does not import.
        ConfigError: a ``process`` program but no worker pool.
    """
    if spec.language is Language.PYTHON:
        return PythonProgram(spec.name, spec.decide, spec.apply, limits)
    if spec.isolation is Isolation.INLINE:
        return StarlarkInlineProgram(spec.name, spec.decide, spec.apply, limits)
    if pool is None:
        raise ConfigError(
            f"aggregate type {spec.name} runs its programs with isolation: process, but no "
            "program worker pool was started (or set isolation: inline for trusted programs)"
        )
    return StarlarkProcessProgram(spec.name, spec.decide, spec.apply, pool)


def program_version(spec: AggregateTypeManifest) -> str:
    """The program version of a manifest type: the first 16 hex digits of the SHA-256 of
    its language and the SHA-256 of its decide and apply texts. Equal texts give equal
    versions on every node; any change of either text gives a new one."""
    parts = (spec.language.value, source_key(spec.decide.text), source_key(spec.apply.text))
    return source_key("\n".join(parts))[:16]


def build_specs(
    manifest: Manifest, *, limits: ProgramLimits | None = None, pool: ProgramPool | None = None
) -> dict[str, AggregateTypeSpec]:
    """One spec per type of ``manifest``, by name. ``limits`` default to ``pool.limits``
    (process programs always use the pool's limits).

    Raises:
        ProgramCompileError, ConfigError: see ``build_program``.
    """
    if limits is None:
        limits = pool.limits if pool is not None else ProgramLimits()
    specs = {}
    for name, spec in manifest.types.items():
        specs[name] = AggregateTypeSpec(
            name=name,
            program=build_program(spec, limits=limits, pool=pool),
            initial_state=json_copy(spec.initial_state),
            version=program_version(spec),
            schemas=spec.schemas or None,
        )
    return specs


async def check_specs(specs: Mapping[str, AggregateTypeSpec]) -> None:
    """Compile every ``process`` program now, in a worker (the others compiled when built).

    Raises:
        ProgramCompileError: the first program that does not compile (program, origin,
            line, column).
        ProgramLimitError: compiling ran past the hard timeout or killed the worker.

    Cancellation: as ``WorkerPool.request``.
    """
    for spec in specs.values():
        if isinstance(spec.program, StarlarkProcessProgram):
            await spec.program.check()


async def check_manifest(
    manifest: Manifest, *, limits: ProgramLimits | None = None, pool: WorkerPool | None = None
) -> dict[str, AggregateTypeSpec]:
    """Compile every Starlark program of ``manifest`` in a worker of ``pool``, then build
    the specs (``inline`` programs are compiled again, now safely, in this process).

    Without a ``pool``, a temporary one-worker pool does the compiling (its start costs
    ~0.3 s); ``process`` programs then get specs that are only good for inspection, that
    pool being closed on return.

    Raises:
        ProgramCompileError: the first program that does not compile, or not within the
            worker's limits (names the type, the text, the limit and its setting).
        ConfigError: see ``build_specs``.
        ProgramError: the temporary worker could not start.
    """
    starlark = [t for t in manifest.types.values() if t.language is Language.STARLARK]
    if pool is not None:
        for spec in starlark:
            await check_in_worker(pool, spec.name, spec.decide, spec.apply)
        return build_specs(manifest, limits=limits, pool=pool)
    if not starlark:
        return build_specs(manifest, limits=limits)
    one = dataclasses.replace(limits or ProgramLimits(), pool_size=1)
    async with WorkerPool(one) as temporary:
        for spec in starlark:
            await check_in_worker(temporary, spec.name, spec.decide, spec.apply)
        return build_specs(manifest, limits=limits, pool=temporary)


def isolation_warnings(manifest: Manifest) -> list[str]:
    """One warning per type whose Starlark programs run ``inline``, for the start-up log
    and ``aggregate check``."""
    return [
        f"aggregate type {name} runs its Starlark programs with isolation: inline, inside "
        "the service process: a memory or big-integer bomb in them aborts the whole service "
        "(every tenant, every call), and a single long operation holds it; use isolation: "
        "process (the default) unless these programs are fully trusted"
        for name, spec in sorted(manifest.types.items())
        if spec.language is Language.STARLARK and spec.isolation is Isolation.INLINE
    ]


class ProgramRegistry:
    """Aggregate type name → spec; the handler's type lookup. Hot-reloadable.

    A spec under ``ANY_TYPE`` serves every type name that has no spec of its own."""

    def __init__(self, specs: Mapping[str, AggregateTypeSpec] | None = None) -> None:
        self._specs: dict[str, AggregateTypeSpec] = dict(specs or {})

    def get(self, name: str) -> AggregateTypeSpec:
        """The spec of type ``name``; hold on to it for the whole command.

        Raises:
            UnknownAggregateTypeError: ``name`` is not configured (names the ones that are).
        """
        specs = self._specs
        spec = specs.get(name) or specs.get(ANY_TYPE)
        if spec is None:
            raise UnknownAggregateTypeError.of(name, specs)
        return spec

    def specs(self) -> dict[str, AggregateTypeSpec]:
        """The table served now (a copy), by type name."""
        return dict(self._specs)

    def names(self) -> list[str]:
        """The configured type names, sorted."""
        return sorted(self._specs)

    def replace(self, specs: Mapping[str, AggregateTypeSpec]) -> None:
        """Serve ``specs`` from now on (one atomic swap). Commands that already looked up
        a spec finish with it; the next lookup sees the new table."""
        self._specs = dict(specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)
