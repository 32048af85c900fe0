"""Trusted Python decide/apply callables (``Language.PYTHON``), run in the service process.

``ProgramSource.text`` is a reference ``package.module:function`` (the function may be a
dotted attribute path). ``decide(state, command)`` returns a list of event dicts or a
``Rejected("reason")`` (from ``aggregate.programs.base``); ``apply(state, event)`` returns
the new state. The functions get private deep copies of their inputs, and their results
are checked to be plain JSON (same rules as Starlark programs) and copied out, so a
function cannot alias or mutate the caller's values. There is no time or memory budget:
only configure code you trust.
"""

from __future__ import annotations

import importlib
import traceback
from typing import TYPE_CHECKING, Any, TypeAlias

from aggregate.domain.errors import (
    AggregateError,
    InvalidArgumentError,
    ProgramCompileError,
    ProgramError,
    ProgramLimitError,
    quote,
)
from aggregate.programs.base import Accepted, ProgramLimits, Rejected
from aggregate.programs.starlark_runtime import check_events, describe
from aggregate.programs.values import json_copy, json_problem

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from aggregate.domain.envelopes import JsonObject
    from aggregate.domain.manifest import ProgramSource
    from aggregate.programs.base import Decision

ProgramFunction: TypeAlias = "Callable[[Any, Any], Any]"


def resolve_reference(source: ProgramSource, *, program: str) -> ProgramFunction:
    """Import ``package.module:function`` and return the callable.

    Raises:
        ProgramCompileError: malformed reference, module not importable (with the line of a
            syntax error), attribute missing or not callable.
    """
    reference = source.text.strip()
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ProgramCompileError(
            f"{program}: {source.origin}: {reference!r} is not a 'package.module:function' "
            "reference",
            program=program,
            origin=source.origin,
        )
    try:
        target: Any = importlib.import_module(module_name)
    except SyntaxError as exc:
        raise ProgramCompileError(
            f"{program}: {source.origin}: module {module_name} has a syntax error at "
            f"{exc.filename}:{exc.lineno}:{exc.offset}: {exc.msg}",
            program=program,
            origin=source.origin,
            line=exc.lineno,
            column=exc.offset,
        ) from None
    except ImportError as exc:
        raise ProgramCompileError(
            f"{program}: {source.origin}: cannot import {module_name}: {exc}",
            program=program,
            origin=source.origin,
        ) from None
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            break
    if not callable(target):
        raise ProgramCompileError(
            f"{program}: {source.origin}: {reference} is not a function",
            program=program,
            origin=source.origin,
        )
    function: ProgramFunction = target
    return function


class PythonProgram:
    """decide/apply given as trusted Python functions. Resolves them at construction.

    Raises (constructor):
        ProgramCompileError: see ``resolve_reference``.
    """

    def __init__(
        self,
        name: str,
        decide: ProgramSource,
        apply: ProgramSource,
        limits: ProgramLimits | None = None,
    ) -> None:
        self._name = name
        self._limits = limits if limits is not None else ProgramLimits()
        self._decide_origin = decide.text
        self._apply_origin = apply.text
        self._decide = resolve_reference(decide, program=name)
        self._apply = resolve_reference(apply, program=name)

    @property
    def name(self) -> str:
        return self._name

    def _call(self, role: str, origin: str, function: ProgramFunction, *args: Any) -> Any:
        try:
            return function(*args)
        except (RecursionError, MemoryError) as exc:
            raise ProgramLimitError(f"{self._name}: {role} ({origin}) {exc!r}") from None
        except AggregateError:
            raise
        except Exception as exc:
            frames = traceback.extract_tb(exc.__traceback__)
            last = frames[-1] if frames else None
            where = f" at {last.filename}:{last.lineno}" if last else ""
            raise ProgramError(
                f"{self._name}: {role} ({origin}) raised {type(exc).__name__}: {exc}{where}",
                program=self._name,
                origin=origin,
                line=last.lineno if last else None,
            ) from exc

    def _check(
        self, value: Any, what: str, error: type[Exception], origin: str, depth: int = 0
    ) -> None:
        """Refuse ``value`` if it is not plain JSON or nests too deep."""
        problem = json_problem(value, self._limits.max_input_depth + depth, strict=True)
        if problem is not None:
            message = f"{self._name}: {what} is refused: {problem.replace('value', what, 1)}"
            if error is ProgramError:
                raise ProgramError(message, program=self._name, origin=origin)
            raise error(message)

    def _fold(self, state: JsonObject, events: Sequence[JsonObject]) -> JsonObject:
        for event in events:
            state = self._call("apply", self._apply_origin, self._apply, state, json_copy(event))
            if not isinstance(state, dict):
                raise ProgramError(
                    f"{self._name}: apply ({self._apply_origin}) returned {describe(state)} "
                    f"for a {quote(event.get('type'))} event; expected the new state (a dict)",
                    program=self._name,
                    origin=self._apply_origin,
                )
        self._check(state, "the state apply built", ProgramError, self._apply_origin)
        copied: JsonObject = json_copy(state)
        return copied

    async def decide(self, state: JsonObject, command: JsonObject) -> Decision:
        """Run decide, then apply for each event, in the calling thread.

        Raises:
            InvalidArgumentError: the command is too deep or not plain JSON.
            ProgramError: a function raised (names line) or returned a malformed value.
            ProgramLimitError: a function hit the recursion limit or ran out of memory.
        """
        origin = self._decide_origin
        self._check(state, "the state", ProgramError, origin)
        self._check(command, "the command", InvalidArgumentError, origin)
        result = self._call("decide", origin, self._decide, json_copy(state), json_copy(command))
        if isinstance(result, Rejected):
            if not isinstance(result.reason, str) or not result.reason:
                raise ProgramError(
                    f"{self._name}: decide ({origin}) rejected without a string reason",
                    program=self._name,
                    origin=origin,
                )
            return Rejected(result.reason)
        check_events(
            result, program=self._name, origin=origin, max_depth=self._limits.max_input_depth
        )
        self._check(result, "the events decide returned", ProgramError, origin, depth=1)
        events: list[JsonObject] = json_copy(result)
        return Accepted(events, self._fold(json_copy(state), events))

    async def apply(self, state: JsonObject, events: Sequence[JsonObject]) -> JsonObject:
        """Fold ``events`` into ``state`` in the calling thread.

        Raises: as ``decide``.
        """
        origin = self._apply_origin
        self._check(state, "the state", ProgramError, origin)
        for event in events:
            self._check(event, "an event", ProgramError, origin)
        return self._fold(json_copy(state), events)
