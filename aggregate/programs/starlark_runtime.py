"""Run a compiled decide/apply pair: the synchronous core of both Starlark isolation modes.

The inline program calls it in the service process; each worker process calls it for the
requests it receives. Values cross into Starlark by conversion (a copy), so the caller's
state, command and events are never mutated, and a step has no effect but its result: it
can be stopped and run again (``SliceExpiredError``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import starlark as sl

from aggregate.domain.errors import InvalidArgumentError, ProgramError, quote
from aggregate.programs.base import Accepted, Rejected
from aggregate.programs.starlark_compile import (
    FOLD,
    Rejection,
    StarlarkFailure,
    is_panic,
    runtime_error,
)
from aggregate.programs.values import json_copy, json_problem

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aggregate.domain.envelopes import JsonObject
    from aggregate.programs.base import Decision, ProgramLimits
    from aggregate.programs.starlark_compile import CompiledModule


class SliceExpiredError(Exception):
    """A step given a ``slice_end`` was still running at that time, before its own deadline:
    it was stopped, and nothing came of it. Run it again where it may take its whole budget.
    """


def describe(value: object) -> str:
    """A short description of a returned value for error messages."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def check_events(events: object, *, program: str, origin: str, max_depth: int) -> list[Any]:
    """``events`` as decide must return them: a list of dicts with a non-empty string
    ``"type"``, nested at most ``max_depth`` levels each.

    Raises:
        ProgramError: naming the program, origin and the first bad event.
    """
    if not isinstance(events, list):
        raise ProgramError(
            f"{program}: decide ({origin}) returned {describe(events)}; expected a list of "
            'events ({"type": ..., ...}) or reject("reason")',
            program=program,
            origin=origin,
        )
    for index, event in enumerate(events):
        kind = event.get("type") if isinstance(event, dict) else None
        if not isinstance(kind, str) or not kind:
            raise ProgramError(
                f"{program}: decide ({origin}) returned event #{index} = {describe(event)}; "
                'each event must be a dict with a non-empty string "type"',
                program=program,
                origin=origin,
            )
    problem = json_problem(events, max_depth + 1)
    if problem is not None:
        raise ProgramError(
            f"{program}: decide ({origin}) returned events that are not plain JSON: "
            f"{problem.replace('value', 'events', 1)}",
            program=program,
            origin=origin,
        )
    return events


@dataclass(frozen=True, slots=True)
class StarlarkPair:
    """The compiled decide and apply of one aggregate type, with where each came from."""

    program: str
    decide_module: CompiledModule
    decide_origin: str
    apply_module: CompiledModule
    apply_origin: str
    limits: ProgramLimits
    _local: threading.local = field(
        default_factory=threading.local, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.decide_module.require("decide", program=self.program, origin=self.decide_origin)
        self.apply_module.require("apply", program=self.program, origin=self.apply_origin)

    def _options(self, deadline: float) -> sl.EvalOptions:
        """The evaluation options of a call ending at ``deadline`` (``time.monotonic``).

        One ``EvalOptions`` per thread, reused: its cancellation check reads the deadline
        the current call set (a call never starts another on the same thread).
        """
        local = self._local
        local.deadline = deadline
        options: sl.EvalOptions | None = getattr(local, "options", None)
        if options is None:
            local.options = options = sl.EvalOptions(
                check_cancelled=lambda: time.monotonic() > local.deadline,
                max_callstack_size=self.limits.max_callstack_size,
            )
        return options

    def _call(
        self,
        role: str,
        module: CompiledModule,
        origin: str,
        *args: object,
        deadline: float,
        budget: float,
        slice_end: float | None = None,
        function: str | None = None,
    ) -> object:
        """Call ``function`` (default: ``role``) until ``deadline``, the end of a step whose
        budget is ``budget`` seconds; stop at ``slice_end`` if that comes first.

        Raises:
            SliceExpiredError: stopped at ``slice_end``, before ``deadline``.
            ProgramError, ProgramLimitError: see ``decide``.
        """
        stop = deadline if slice_end is None else min(deadline, slice_end)
        options = self._options(stop)
        try:
            return module.module.call_with(options, function or role, *args).value
        except sl.StarlarkError as exc:
            if slice_end is not None and time.monotonic() < deadline and _cancelled(exc):
                raise SliceExpiredError from None
            raise runtime_error(
                exc,
                program=self.program,
                role=role,
                origin=origin,
                budget=budget,
                limits=self.limits,
            ) from None
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise ProgramError(
                f"{self.program}: {role} ({origin}) exchanged a value that is not plain "
                f"JSON: {exc}",
                program=self.program,
                origin=origin,
            ) from None
        except BaseException as exc:
            if not is_panic(exc):
                raise
            raise ProgramError(
                f"{self.program}: the Starlark interpreter failed in {role} ({origin}): {exc}",
                program=self.program,
                origin=origin,
            ) from None

    def _check_input(self, value: object, what: str, error: type[Exception]) -> None:
        problem = json_problem(value, self.limits.max_input_depth)
        if problem is not None:
            message = (
                f"{self.program}: the {what} handed to the program is refused: "
                f"{problem.replace('value', what, 1)} (max_input_depth)"
            )
            if issubclass(error, ProgramError):
                raise ProgramError(message, program=self.program)
            raise error(message)

    def _not_a_state(self, value: object, event: JsonObject) -> ProgramError:
        return ProgramError(
            f"{self.program}: apply ({self.apply_origin}) returned {describe(value)} for a "
            f"{quote(event.get('type'))} event; expected the new state (a dict)",
            program=self.program,
            origin=self.apply_origin,
        )

    def _apply_one(
        self,
        state: JsonObject,
        event: JsonObject,
        *,
        deadline: float,
        slice_end: float | None,
    ) -> JsonObject:
        new_state = self._call(
            "apply",
            self.apply_module,
            self.apply_origin,
            state,
            event,
            deadline=deadline,
            budget=self.limits.soft_timeout_seconds,
            slice_end=slice_end,
        )
        if not isinstance(new_state, dict):
            raise self._not_a_state(new_state, event)
        return new_state

    def _check_state_out(self, state: JsonObject) -> JsonObject:
        problem = json_problem(state, self.limits.max_input_depth)
        if problem is not None:
            raise ProgramError(
                f"{self.program}: apply ({self.apply_origin}) built a state that is refused: "
                f"{problem.replace('value', 'state', 1)} (max_input_depth)",
                program=self.program,
                origin=self.apply_origin,
            )
        return state

    def decide(
        self, state: JsonObject, command: JsonObject, *, slice_end: float | None = None
    ) -> Decision:
        """Run decide, then apply for each decided event: one step, with one soft deadline.

        Raises:
            InvalidArgumentError: the command nests deeper than ``max_input_depth``.
            ProgramError: the state is too deep, a program crashed or returned a malformed
                value.
            ProgramLimitError: the step ran past the soft deadline, or a call past the
                call-stack budget.
            SliceExpiredError: still running at ``slice_end`` (``time.monotonic``).
        """
        self._check_input(state, "state", ProgramError)
        self._check_input(command, "command", InvalidArgumentError)
        budget = self.limits.soft_timeout_seconds
        deadline = time.monotonic() + budget
        result = self._call(
            "decide",
            self.decide_module,
            self.decide_origin,
            state,
            command,
            deadline=deadline,
            budget=budget,
            slice_end=slice_end,
        )
        if isinstance(result, Rejection):
            return Rejected(result.reason)
        events = check_events(
            result,
            program=self.program,
            origin=self.decide_origin,
            max_depth=self.limits.max_input_depth,
        )
        new_state = state
        for event in events:
            new_state = self._apply_one(new_state, event, deadline=deadline, slice_end=slice_end)
        if new_state is state:
            new_state = self._call_identity(state)
        return Accepted(events, self._check_state_out(new_state))

    def _call_identity(self, state: JsonObject) -> JsonObject:
        # No events: the state is unchanged, but the caller gets its own copy.
        copied: JsonObject = json_copy(state)
        return copied

    def apply(
        self,
        state: JsonObject,
        events: Sequence[JsonObject],
        *,
        slice_end: float | None = None,
    ) -> JsonObject:
        """Apply ``events`` in order (rehydration), in one step.

        Raises:
            ProgramError: state or events too deep, apply crashed or returned a non-dict.
            ProgramLimitError: the step ran past its budget or the call-stack budget.
            SliceExpiredError: still running at ``slice_end`` (``time.monotonic``).
        """
        self._check_input(state, "state", ProgramError)
        for event in events:
            self._check_input(event, "event", ProgramError)
        if not events:
            return self._call_identity(state)
        budget = self.limits.soft_timeout_seconds
        budget += self.limits.timeout_per_event_seconds * len(events)
        folded = self._call(
            "apply",
            self.apply_module,
            self.apply_origin,
            state,
            events if isinstance(events, list) else list(events),
            function=FOLD,
            deadline=time.monotonic() + budget,
            budget=budget,
            slice_end=slice_end,
        )
        if not isinstance(folded, dict):
            assert isinstance(folded, list)
            index, value = folded
            raise self._not_a_state(value, events[index])
        return self._check_state_out(folded)


def _cancelled(exc: BaseException) -> bool:
    return "Evaluation cancelled" in StarlarkFailure.parse(exc).summary
