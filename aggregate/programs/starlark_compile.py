"""Compile Starlark programs once, cached by source hash, and translate Starlark errors.

Shared by the inline runtime (service process, trusted programs) and the worker processes
(untrusted programs): parsing or evaluating an untrusted source in the service process is
not safe (``x = [[[...]]]`` nested ~10,000 deep overflows the native stack and crashes the
host), so process-isolated programs are only ever compiled inside a worker.

Programs are written in the standard Starlark dialect plus f-strings and type annotations,
without ``load`` (programs are hermetic), with the standard globals and ``json``. They get
one extra global, ``reject(reason)``, whose value returned from ``decide`` is a rejection
(DESIGN §7: ``fail()`` is a crash, not a rejection).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import starlark as sl

from aggregate.domain.errors import (
    AggregateError,
    ProgramCompileError,
    ProgramError,
    ProgramLimitError,
    quote,
)

if TYPE_CHECKING:
    from aggregate.programs.base import ProgramLimits

ENTRY_POINTS = ("decide", "apply")
FOLD = "aggregate_internal_fold"
# Added to every module that defines apply: rehydration folds a whole batch in one call
# (values cross into the interpreter once, ~5x faster than one call per event). A
# non-dict state stops the fold and comes back as [index, value] for the error message.
_FOLD_SOURCE = f"""
def {FOLD}(state, events):
    for index, event in enumerate(events):
        state = apply(state, event)
        if type(state) != "dict":
            return [index, state]
    return state
"""
_LOCATION = re.compile(r"-->\s*(?P<file>.*?):(?P<line>\d+):(?P<column>\d+)\s*$", re.MULTILINE)


def _dialect() -> sl.Dialect:
    dialect = sl.Dialect.extended()
    dialect.enable_load = False
    dialect.enable_f_strings = True
    return dialect


DIALECT = _dialect()
GLOBALS = sl.Globals.extended_by([sl.LibraryExtension.Json])


class Rejection:
    """What ``reject(reason)`` returns inside a Starlark program: a value, not an error."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _reject(reason: object) -> object:
    if not isinstance(reason, str) or not reason:
        raise ValueError(f"reject(reason) needs a non-empty string, got {quote(reason)}")
    return sl.OpaquePythonObject(Rejection(reason))


def source_key(text: str) -> str:
    """The cache key of a program text: its SHA-256, hex."""
    return hashlib.sha256(text.encode()).hexdigest()


def is_panic(exc: BaseException) -> bool:
    """True for pyo3's ``PanicException`` (a ``BaseException``: a bug inside the
    interpreter, reported as a program error rather than let through)."""
    return type(exc).__name__ == "PanicException"


@dataclass(frozen=True, slots=True)
class StarlarkFailure:
    """A ``StarlarkError`` taken apart: first ``error:`` line, position, code snippet."""

    summary: str
    line: int | None
    column: int | None
    snippet: str

    @classmethod
    def parse(cls, exc: BaseException) -> StarlarkFailure:
        text = str(exc)
        matches = list(_LOCATION.finditer(text))
        location = matches[-1] if matches else None
        if location is not None and location["file"].startswith("<"):
            location = None  # inside the service's own glue code: no user position
        summary = next(
            (ln.strip()[len("error:") :].strip() for ln in text.splitlines()
             if ln.strip().startswith("error:")),
            text.strip().splitlines()[-1] if text.strip() else type(exc).__name__,
        )  # fmt: skip
        snippet = text[location.end() :].strip("\n").rstrip() if location else ""
        return cls(
            summary=summary,
            line=int(location["line"]) if location else None,
            column=int(location["column"]) if location else None,
            snippet=snippet,
        )

    def where(self, origin: str) -> str:
        return f"{origin}:{self.line}:{self.column}" if self.line is not None else origin


def runtime_error(
    exc: BaseException,
    *,
    program: str,
    role: str,
    origin: str,
    budget: float,
    limits: ProgramLimits,
) -> AggregateError:
    """The error to raise for a failed call of ``role`` (``decide`` or ``apply``).

    ``Evaluation cancelled`` (soft deadline) and call-stack overflow are budget errors
    (``ProgramLimitError``); everything else (``fail()``, a missing key, a bad operand) is a
    ``ProgramError`` carrying program, origin, line and column.
    """
    failure = StarlarkFailure.parse(exc)
    where = failure.where(origin)
    # A budget error reaches the client (RESOURCE_EXHAUSTED): it names the position in the
    # program, never the program's file (a server path).
    position = f"line {failure.line}, column {failure.column}" if failure.line is not None else role
    if "Evaluation cancelled" in failure.summary:
        return ProgramLimitError(
            f"{program}: {role} ran past its time budget of {budget:g}s "
            f"(soft_timeout_seconds), stopped at {position}"
        )
    if "call stack overflow" in failure.summary:
        return ProgramLimitError(
            f"{program}: {role} exceeded the call-stack budget of {limits.max_callstack_size} "
            f"frames (max_callstack_size) at {position}; is the recursion unbounded?"
        )
    detail = f"\n{failure.snippet}" if failure.snippet else ""
    return ProgramError(
        f"{program}: {role} failed at {where}: {failure.summary}{detail}",
        program=program,
        origin=origin,
        line=failure.line,
        column=failure.column,
    )


def _compile_error(exc: BaseException, *, program: str, origin: str) -> ProgramCompileError:
    failure = StarlarkFailure.parse(exc)
    if "Evaluation cancelled" in failure.summary:
        failure = StarlarkFailure(
            "top-level code ran past the time budget (soft_timeout_seconds)",
            failure.line,
            failure.column,
            failure.snippet,
        )
    detail = f"\n{failure.snippet}" if failure.snippet else ""
    return ProgramCompileError(
        f"{program}: {origin} does not compile: {failure.where(origin)}: {failure.summary}{detail}",
        program=program,
        origin=origin,
        line=failure.line,
        column=failure.column,
    )


@dataclass(frozen=True, slots=True)
class CompiledModule:
    """A compiled, frozen program text and which entry points (``decide``, ``apply``) it
    defines as functions."""

    key: str
    module: sl.FrozenModule
    functions: frozenset[str]

    def require(self, role: str, *, program: str, origin: str) -> None:
        """Raises:
        ProgramCompileError: the text does not define ``role`` as a function."""
        if role not in self.functions:
            second = "command" if role == "decide" else "event"
            raise ProgramCompileError(
                f"{program}: {origin} does not define the function {role}(state, {second})",
                program=program,
                origin=origin,
            )


def compile_module(
    text: str, origin: str, *, program: str, limits: ProgramLimits
) -> CompiledModule:
    """Parse and evaluate ``text`` (top-level code runs under the soft deadline).

    Raises:
        ProgramCompileError: syntax error, an error in top-level code, or top-level code
            past the time budget; names program, origin, line and column.
    """
    try:
        ast = sl.parse(origin, text, DIALECT)
        module = sl.Module()
        module.add_callable("reject", _reject)
        deadline = time.monotonic() + limits.soft_timeout_seconds
        options = sl.EvalOptions(
            check_cancelled=lambda: time.monotonic() > deadline,
            max_callstack_size=limits.max_callstack_size,
        )
        sl.eval_with(options, module, ast, GLOBALS)
        functions = set()
        for name in ENTRY_POINTS:
            try:
                kind = sl.eval(module, sl.parse("<entry-check>", f"type({name})\n"), GLOBALS)
            except sl.StarlarkError:
                continue
            if kind == "function":
                functions.add(name)
        if "apply" in functions:
            sl.eval(module, sl.parse("<aggregate-fold>", _FOLD_SOURCE, DIALECT), GLOBALS)
        frozen = module.freeze()
    except sl.StarlarkError as exc:
        raise _compile_error(exc, program=program, origin=origin) from None
    except BaseException as exc:
        if not is_panic(exc):
            raise
        raise _compile_error(exc, program=program, origin=origin) from None
    return CompiledModule(key=source_key(text), module=frozen, functions=frozenset(functions))


class CompileCache:
    """Compiled modules by source hash (least recently used first out).

    The same text compiled for two origins is compiled once; errors name the caller's
    origin (line and column do not depend on it).
    """

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._modules: OrderedDict[str, CompiledModule] = OrderedDict()

    def get(self, key: str) -> CompiledModule | None:
        """The module compiled from the text whose ``source_key`` is ``key``, if cached."""
        module = self._modules.get(key)
        if module is not None:
            self._modules.move_to_end(key)
            self.hits += 1
        return module

    def compile(
        self, text: str, origin: str, *, program: str, limits: ProgramLimits
    ) -> CompiledModule:
        """The cached module for ``text``, compiling it on a miss.

        Raises:
            ProgramCompileError: as ``compile_module`` (failures are not cached).
        """
        cached = self.get(source_key(text))
        if cached is not None:
            return cached
        self.misses += 1
        module = compile_module(text, origin, program=program, limits=limits)
        self._modules[module.key] = module
        while len(self._modules) > self.capacity:
            self._modules.popitem(last=False)
        return module

    def __len__(self) -> int:
        return len(self._modules)


COMPILE_CACHE = CompileCache()
"""The process-wide cache (the service process for inline programs; each worker for its
own)."""
