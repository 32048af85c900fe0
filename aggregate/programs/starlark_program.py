"""Starlark decide/apply programs as ``AggregateProgram``s, in both isolation modes.

- ``StarlarkInlineProgram``: compiled and run in the service process (trusted programs;
  ~20 µs a call). A step runs on the event loop for at most ``inline_slice_seconds``; one
  still running then is stopped and run again in a thread, so the loop keeps serving while
  it takes up to its soft deadline. A runaway loop is stopped by the soft deadline, but
  some single operations cannot be interrupted (they hold the whole process, thread or
  not) and a memory bomb aborts the whole process, which is why untrusted programs use:
- ``StarlarkProcessProgram``: run by a ``WorkerPool``; decide plus all its applies, or a
  whole rehydration batch, is one round trip. The program text is compiled in the workers
  only (never parsed in the service process).

Programs: ``def decide(state, command)`` returns a list of events (dicts with a string
``"type"``) or ``reject("reason")``; ``def apply(state, event)`` returns the new state. Both
may live in one file.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.lowlevel
import anyio.to_thread

from aggregate.domain.errors import (
    InvalidArgumentError,
    ProgramCompileError,
    ProgramError,
    ProgramLimitError,
)
from aggregate.programs.base import Accepted, ProgramLimits, Rejected, limit_name
from aggregate.programs.pool import WorkerCrashError, WorkerTimeoutError
from aggregate.programs.starlark_compile import COMPILE_CACHE, CompileCache, source_key
from aggregate.programs.starlark_runtime import SliceExpiredError, StarlarkPair
from aggregate.programs.values import json_copy, json_problem

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from aggregate.domain.envelopes import JsonObject
    from aggregate.domain.manifest import ProgramSource
    from aggregate.programs.base import Decision
    from aggregate.programs.pool import ProgramPool

APPLY_CHUNK = 1000  # inline rehydration yields to the event loop between chunks
INLINE_THREADS = 2
"""Inline steps that outlast their slice run in threads, at most this many at once (per
event loop): each holds the interpreter lock between its interpreter's cancellation
checks, so more of them would only lengthen the loop's waits for it."""
_THREADS: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar(
    "aggregate_inline_program_threads"
)
T = TypeVar("T")


def _thread_limiter() -> anyio.CapacityLimiter:
    try:
        return _THREADS.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(INLINE_THREADS)
        _THREADS.set(limiter)
        return limiter


class StarlarkInlineProgram:
    """A Starlark program run in the service process. Compiles at construction.

    Raises (constructor):
        ProgramCompileError: a source does not compile or lacks its function.
    """

    def __init__(
        self,
        name: str,
        decide: ProgramSource,
        apply: ProgramSource,
        limits: ProgramLimits | None = None,
        *,
        cache: CompileCache = COMPILE_CACHE,
    ) -> None:
        limits = limits if limits is not None else ProgramLimits()
        self._name = name
        self._slice = limits.inline_slice_seconds
        self._pair = StarlarkPair(
            program=name,
            decide_module=cache.compile(decide.text, decide.origin, program=name, limits=limits),
            decide_origin=decide.origin,
            apply_module=cache.compile(apply.text, apply.origin, program=name, limits=limits),
            apply_origin=apply.origin,
            limits=limits,
        )

    @property
    def name(self) -> str:
        return self._name

    async def _run(self, step: Callable[..., T], *args: Any) -> T:
        """Run ``step`` on the event loop for at most ``inline_slice_seconds``; if it is
        still running then, run it again from the start in a thread (its soft deadline
        starts over there)."""
        try:
            return step(*args, slice_end=time.monotonic() + self._slice)
        except SliceExpiredError:
            pass
        return await anyio.to_thread.run_sync(
            functools.partial(step, *args), limiter=_thread_limiter()
        )

    async def decide(self, state: JsonObject, command: JsonObject) -> Decision:
        """Run decide and the applies of its events (one step, see ``_run``).

        Raises:
            InvalidArgumentError: the command nests deeper than ``max_input_depth``.
            ProgramError: the program crashed or returned a malformed value.
            ProgramLimitError: past the soft deadline or the call-stack budget.

        Cancellation: not while the step runs in a thread (it ends by its soft deadline).
        """
        return await self._run(self._pair.decide, state, command)

    async def apply(self, state: JsonObject, events: Sequence[JsonObject]) -> JsonObject:
        """Fold ``events`` into ``state``, ``APPLY_CHUNK`` events a step, yielding to the
        event loop between steps.

        Raises: as ``decide``. Cancellation: between steps; nothing is mutated.
        """
        if len(events) <= APPLY_CHUNK:
            return await self._run(self._pair.apply, state, events)
        for start in range(0, len(events), APPLY_CHUNK):
            state = await self._run(self._pair.apply, state, events[start : start + APPLY_CHUNK])
            await anyio.lowlevel.checkpoint()
        return state


class StarlarkProcessProgram:
    """A Starlark program run by a ``WorkerPool`` (untrusted programs).

    Nothing is compiled at construction; ``check()`` compiles in a worker, and every worker
    compiles a text the first time it needs it (cached by source hash).
    """

    def __init__(
        self, name: str, decide: ProgramSource, apply: ProgramSource, pool: ProgramPool
    ) -> None:
        self._name = name
        self._pool = pool
        self._programs = (decide, apply)
        decide_key, apply_key = source_key(decide.text), source_key(apply.text)
        self._sources = {decide_key: decide.text, apply_key: apply.text}
        self._entries = {
            "program": name,
            "decide": {"key": decide_key, "origin": decide.origin},
            "apply": {"key": apply_key, "origin": apply.origin},
        }

    @property
    def name(self) -> str:
        return self._name

    @property
    def limits(self) -> ProgramLimits:
        return self._pool.limits

    def _check_input(self, value: object, what: str, error: type[Exception]) -> None:
        problem = json_problem(value, self.limits.max_input_depth)
        if problem is not None:
            message = (
                f"{self._name}: the {what} handed to the program is refused: "
                f"{problem.replace('value', what, 1)} (max_input_depth)"
            )
            if issubclass(error, ProgramError):
                raise ProgramError(message, program=self._name)
            raise error(message)

    async def _request(self, op: str, time_limit: float, **values: Any) -> Any:
        message = {"op": op, **self._entries, **values}
        return await self._pool.request(message, sources=self._sources, time_limit=time_limit)

    async def check(self) -> None:
        """Compile both programs in a worker.

        Raises:
            ProgramCompileError: with program, origin, line and column; or compiling ran
                past a limit (the hard timeout, the worker's memory).

        Cancellation: as ``WorkerPool.request``.
        """
        await check_in_worker(self._pool, self._name, *self._programs)

    async def decide(self, state: JsonObject, command: JsonObject) -> Decision:
        """Run decide and the applies of its events in one round trip to a worker.

        Raises:
            InvalidArgumentError: the command is too deep or not plain JSON.
            ProgramError: the program crashed or returned a malformed value.
            ProgramLimitError: past the soft deadline, the call-stack budget, the hard
                timeout, or the worker's memory limit.

        Cancellation: the worker running the call is killed and replaced (see
        ``WorkerPool.request``).
        """
        self._check_input(state, "state", ProgramError)
        self._check_input(command, "command", InvalidArgumentError)
        answer = await self._request(
            "decide", self.limits.hard_timeout_seconds, state=state, command=command
        )
        if "rejected" in answer:
            return Rejected(str(answer["rejected"]))
        return Accepted(answer["events"], answer["state"])

    async def apply(self, state: JsonObject, events: Sequence[JsonObject]) -> JsonObject:
        """Fold ``events`` into ``state`` in one round trip; the hard deadline grows by
        ``timeout_per_event_seconds`` per event.

        Raises and cancellation: as ``decide``.
        """
        if not events:
            copied: JsonObject = json_copy(state)
            return copied
        self._check_input(state, "state", ProgramError)
        for event in events:
            self._check_input(event, "event", ProgramError)
        limits = self.limits
        per_event = limits.timeout_per_event_seconds
        time_limit = limits.hard_timeout_seconds + per_event * len(events)
        new_state: JsonObject = await self._request(
            "apply", time_limit, state=state, events=list(events)
        )
        return new_state


async def check_in_worker(
    pool: ProgramPool, program: str, decide: ProgramSource, apply: ProgramSource
) -> None:
    """Compile ``decide`` and ``apply`` (once if they are one text) in a worker of ``pool``
    and check that they define their functions, under the worker's limits.

    A text compiled there without harm compiles the same way anywhere (compiling is
    deterministic), which is how an ``inline`` program is known to be safe to compile in
    the service process.

    Raises:
        ProgramCompileError: the text does not compile (program, origin, line, column), or
            compiling it ran past the worker's memory or the hard timeout, or crashed it:
            the message names the type, the text, the limit and its setting.

    Cancellation: as ``WorkerPool.request``.
    """
    roles: dict[str, tuple[ProgramSource, list[str]]] = {}
    for role, source in (("decide", decide), ("apply", apply)):
        roles.setdefault(source_key(source.text), (source, []))[1].append(role)
    limits = pool.limits
    for key, (source, needed) in roles.items():
        message = {
            "op": "compile",
            "program": program,
            "entry": {"key": key, "origin": source.origin},
            "roles": needed,
        }
        try:
            await pool.request(
                message, sources={key: source.text}, time_limit=limits.hard_timeout_seconds
            )
        except ProgramLimitError as exc:
            raise _compile_limit_error(exc, program, source.origin, limits) from None


def _compile_limit_error(
    exc: ProgramLimitError, program: str, origin: str, limits: ProgramLimits
) -> ProgramCompileError:
    if isinstance(exc, WorkerCrashError) and exc.out_of_memory:
        mib = limits.max_memory_bytes / (1024 * 1024)
        detail = (
            f"while compiling, the program worker hit its address-space limit of {mib:g} MiB "
            f"({limit_name('max_memory_bytes')}): {exc.reason}. The compiler computes "
            'constant expressions such as "x" * 2000000000, even in code that never runs'
        )
    elif isinstance(exc, WorkerCrashError):
        detail = (
            f"while compiling, the program worker crashed: {exc.reason}. A deeply nested "
            "expression overflows the compiler's stack"
        )
    elif isinstance(exc, WorkerTimeoutError):
        detail = (
            f"compiling ran past the hard time limit of {exc.time_limit:g}s "
            f"({limit_name('hard_timeout_seconds')})"
        )
    else:
        detail = exc.message
    return ProgramCompileError(
        f"aggregate type {program}: {origin} does not compile within the program limits: {detail}",
        program=program,
        origin=origin,
    )
