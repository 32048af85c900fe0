"""A pool of program worker processes (DESIGN §7, ``process`` isolation).

Each worker is ``python -m aggregate.programs.worker`` started with ``anyio.open_process``
(so the pool works on asyncio and under Trio), talking framed JSON over its stdin/stdout
(``aggregate.programs.framing``); it caps its own address space at start. A call takes an
idle worker (waiting for one if all are busy), sends one request (decide plus all its
applies, or a whole rehydration batch) and reads one answer under a hard deadline.

**Batching.** Calls that find every worker busy queue; the call that gets the next free
worker takes up to ``max_batch_calls`` queued calls with it, in their order, and sends them
in one frame (one write, one wake-up of the worker, one read of the answers); each call
still gets its own answer or its own error. A pool under load thus pays the round trip's
fixed cost once per batch rather than once per call; an idle pool sends each call alone,
as before. If a batch loses its worker (crash, hard deadline), every call of it is run
again alone, so one program's fault fails only its own call.

A worker that runs past the hard deadline is killed; one that dies (memory exhausted,
interpreter abort, segfault) is noticed by its closed stdout. Either way the call raises
``ProgramLimitError`` and a replacement is started in the background, so the pool keeps
serving. The pool tracks which program texts each worker has compiled and sends a text
only to workers that lack it.

Usage::

    async with open_worker_pool(limits) as pool:   # or: async with WorkerPool(limits)
        program = StarlarkProcessProgram(name, decide_source, apply_source, pool)
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from subprocess import PIPE
from typing import TYPE_CHECKING, Any, Protocol, Self

import anyio

from aggregate.domain.errors import InvalidArgumentError, ProgramError, ProgramLimitError
from aggregate.programs.base import ProgramLimits
from aggregate.programs.call_queue import BatchLostError, CallQueue, QueuedCall
from aggregate.programs.framing import MISSING, batch_body, decode, encode, error_from_wire
from aggregate.programs.worker_process import (
    STREAM_FAILURES,
    WorkerCrashError,
    WorkerDiedError,
    WorkerProcess,
    WorkerTimeoutError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup

__all__ = ["ProgramPool", "WorkerCrashError", "WorkerPool", "WorkerTimeoutError"]

log = logging.getLogger(__name__)
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class WorkerPool:
    """``limits.pool_size`` worker processes serving program calls.

    Open it with ``async with WorkerPool(limits)`` or ``open_worker_pool(limits)``; on exit
    every worker is stopped (stdin closed, then killed after a second).
    """

    def __init__(self, limits: ProgramLimits | None = None, *, python: str | None = None):
        self.limits = limits if limits is not None else ProgramLimits()
        self._python = python or sys.executable
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._queue = CallQueue()
        self._workers: set[WorkerProcess] = set()
        self._closing = False
        self._calls = 0
        self._quiet: anyio.Event | None = None
        self.spawned = 0  # workers started so far (replacements included): for tests, metrics
        self.batches = 0  # frames of more than one call sent so far: for tests, metrics

    async def __aenter__(self) -> Self:
        """Start the workers; returns when all reported ready.

        Raises:
            ProgramError: a worker could not start (its stderr's last line is quoted).
        """
        stack = AsyncExitStack()
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        try:
            for _ in range(self.limits.pool_size):
                self._queue.release(await self._spawn())
        except BaseException:
            await self._exit()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._exit()

    async def _exit(self) -> None:
        await self.aclose()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def aclose(self) -> None:
        """Stop every worker and the background tasks. Calls still in flight fail with
        ``ProgramError``. Idempotent; runs shielded from cancellation (a second or so)."""
        if self._closing:
            return
        self._closing = True
        with anyio.CancelScope(shield=True):
            self._queue.close()
            for worker in list(self._workers):
                await worker.aclose()
            self._workers.clear()
            if self._tg is not None:
                self._tg.cancel_scope.cancel()

    async def _spawn(self) -> WorkerProcess:
        assert self._tg is not None
        limits = json.dumps(self.limits.to_json())
        command = [self._python, "-m", "aggregate.programs.worker", "--limits", limits]
        process = await anyio.open_process(
            command, stdin=PIPE, stdout=PIPE, stderr=PIPE, cwd=_PACKAGE_ROOT
        )
        worker = WorkerProcess(process)
        self._workers.add(worker)
        self.spawned += 1
        self._tg.start_soon(worker.drain_stderr)
        hello = None
        with anyio.move_on_after(self.limits.startup_timeout_seconds):
            try:
                hello = decode(await worker.receive(self.limits.max_message_bytes))
            except (WorkerDiedError, *STREAM_FAILURES, ValueError):
                pass
        if not isinstance(hello, dict) or "ready" not in hello:
            reason = await worker.death_reason()
            self._workers.discard(worker)
            await worker.aclose()
            raise ProgramError(
                f"a program worker process did not start ({reason}); check "
                f"max_memory_bytes={self.limits.max_memory_bytes} and that "
                f"{self._python} can import aggregate"
            )
        return worker

    def _release(self, worker: WorkerProcess) -> None:
        """``worker`` is free: on to the next queued call, or idle (retired if closing)."""
        if self._closing or not self._queue.release(worker):
            self._retire(worker)

    def _retire(self, worker: WorkerProcess) -> None:
        """Kill ``worker`` now (synchronously: safe on a cancelled path) and start a
        replacement in the background."""
        worker.kill()
        if self._tg is not None and not self._closing:
            self._tg.start_soon(self._replace, worker)

    async def _replace(self, old: WorkerProcess) -> None:
        await old.aclose()
        self._workers.discard(old)
        delay = 0.1
        while not self._closing:
            try:
                new = await self._spawn()
            except ProgramError as exc:
                log.warning("restarting a program worker failed, retrying: %s", exc.message)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._release(new)
            return

    async def request(
        self, message: dict[str, Any], *, sources: Mapping[str, str], time_limit: float
    ) -> Any:
        """Send ``message`` to a worker and return its answer's ``"ok"`` value.

        ``sources`` maps the source keys the message names to their texts; a worker gets
        the texts it has not compiled yet. Waiting for a worker is not timed (bound it
        with the caller's own deadline); the exchange is, by ``time_limit`` seconds (a
        batch by the sum of its calls' limits). A call that waited may be sent with
        other waiting calls in one batch (see the module's docstring).

        Raises:
            InvalidArgumentError: ``message`` is not plain JSON.
            WorkerTimeoutError: the exchange ran past ``time_limit`` (the worker is killed).
            WorkerCrashError: the worker died (memory exhausted, abort, crash), or its
                answer exceeds ``max_message_bytes``.
            ProgramLimitError: the request exceeds ``max_message_bytes``.
            ProgramError, ProgramCompileError, InvalidArgumentError: what the program
                raised in the worker, with its class, line and column.

        Cancellation: while waiting for a worker, nothing happens; while the call's batch
        runs, a call that leads it has the worker killed at once (its state is unknown;
        a replacement starts in the background, the batch's other calls are queued
        again), and a call that rides in another call's batch is dropped from it. The
        cancellation propagates.
        """
        self._calls += 1
        try:
            return await self._request(message, sources=sources, time_limit=time_limit)
        finally:
            self._calls -= 1
            if self._calls == 0 and self._quiet is not None:
                self._quiet.set()

    @property
    def calls_in_flight(self) -> int:
        """Calls of ``request`` not yet returned (waiting for a worker or exchanging)."""
        return self._calls

    async def wait_idle(self) -> None:
        """Return once no call is in flight. Used before closing a pool that was replaced:
        no new call reaches it, and each call in flight ends by its own hard deadline.

        Cancellation: stops waiting; the calls go on.
        """
        while self._calls:
            self._quiet = anyio.Event()
            await self._quiet.wait()

    async def _request(
        self, message: dict[str, Any], *, sources: Mapping[str, str], time_limit: float
    ) -> Any:
        program = str(message.get("program", "?"))
        try:
            body = encode(message)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"{program}: a value is not plain JSON: {exc}") from None
        if len(body) > self.limits.max_message_bytes:
            raise ProgramLimitError(
                f"{program}: a request of {len(body)} bytes exceeds max_message_bytes="
                f"{self.limits.max_message_bytes}"
            )
        call = QueuedCall(body, sources, time_limit)
        while True:
            worker = await self._queue.worker_for(call)
            if worker is None:
                break  # another call's batch answered this one, or the pool closed
            batch = self._queue.take(
                call, max_calls=self.limits.max_batch_calls, max_bytes=self._max
            )
            try:
                await self._run(worker, program, batch)
            except BatchLostError:
                continue  # queued again at the head, to run alone
            break
        if call.state == "closed":
            raise ProgramError("the program worker pool is closed")
        answer = call.answer
        assert answer is not None
        if "error" in answer:
            raise error_from_wire(answer["error"])
        return answer["ok"]

    async def _run(self, worker: WorkerProcess, program: str, batch: Sequence[QueuedCall]) -> None:
        """Run ``batch`` on ``worker`` and answer each of its calls.

        Raises:
            BatchLostError: a batch of several calls lost its worker (each is queued or
                to be run again alone).
            WorkerTimeoutError, WorkerCrashError, ProgramError: a call alone lost it.
        """
        healthy = lost = False
        try:
            if len(batch) == 1:
                answers = [
                    await self._exchange(
                        worker, program, batch[0].body, batch[0].sources, batch[0].time_limit
                    )
                ]
            else:
                self.batches += 1
                answers = await self._exchange_batch(worker, program, batch)
            healthy = True
        except (WorkerTimeoutError, WorkerCrashError) as exc:
            if len(batch) == 1:
                raise
            lost = True
            log.info(
                "a batch of %d program calls lost its worker (%s): each runs again alone",
                len(batch),
                exc.message,
            )
            raise BatchLostError from None
        finally:
            if healthy:
                self._release(worker)
            else:
                self._retire(worker)
                self._queue.requeue(batch[1:], leader=batch[0] if lost else None)
        for call, answer in zip(batch, answers, strict=True):
            call.answered(answer)

    async def _exchange_batch(
        self, worker: WorkerProcess, program: str, batch: Sequence[QueuedCall]
    ) -> list[dict[str, Any]]:
        sources = {key: text for call in batch for key, text in call.sources.items()}
        body = batch_body([call.body for call in batch])
        time_limit = sum(call.time_limit for call in batch)
        answer = await self._exchange(
            worker, program, body, sources, time_limit, max_bytes=self._max * len(batch)
        )
        answers = answer.get("ok")
        if (
            not isinstance(answers, list)
            or len(answers) != len(batch)
            or not all(isinstance(one, dict) and ("ok" in one or "error" in one) for one in answers)
        ):
            # A worker that cannot answer a batch (one older than the pool?) is not trusted
            # with more calls: the pool replaces it and each call runs again alone.
            raise WorkerCrashError(
                f"{program}: a program worker gave an unreadable answer to a batch",
                reason=str(answer.get("error", "not a list of answers"))[:200],
            )
        return answers

    async def _exchange(
        self,
        worker: WorkerProcess,
        program: str,
        body: bytes,
        sources: Mapping[str, str],
        time_limit: float,
        *,
        max_bytes: int | None = None,
    ) -> dict[str, Any]:
        died: str | None = None
        limit = max_bytes or self._max
        with anyio.move_on_after(time_limit):
            try:
                needed = {k: t for k, t in sources.items() if k not in worker.loaded}
                answer = decode(await worker.exchange(_with(body, needed), limit))
                if answer.get("error", {}).get("kind") == MISSING:
                    answer = decode(await worker.exchange(_with(body, sources), limit))
                if "error" not in answer or answer["error"].get("kind") != "compile":
                    worker.loaded.update(sources)
                return dict(answer)
            except WorkerDiedError as exc:
                died = str(exc)
            except ValueError as exc:
                died = f"unreadable answer: {exc}"
        if self._closing:
            raise ProgramError(f"{program}: the program worker pool closed during the call")
        if died is not None:
            reason = await worker.death_reason()
            raise WorkerCrashError(
                f"{program}: the program's worker process died ({died}; {reason}); most likely the "
                f"program exhausted its memory (max_memory_bytes={self.limits.max_memory_bytes})"
                " or crashed the interpreter. A new worker is being started.",
                reason=reason,
            )
        raise WorkerTimeoutError(
            f"{program}: the program ran past the hard time limit of {time_limit:g}s "
            "(hard_timeout_seconds); its worker process was killed and is being replaced",
            time_limit=time_limit,
        )

    @property
    def _max(self) -> int:
        return self.limits.max_message_bytes

    @property
    def idle_workers(self) -> int:
        """How many workers are waiting for a call."""
        return len(self._queue.idle)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        return sorted(w.process.pid for w in self._workers if w.process.returncode is None)


class ProgramPool(Protocol):
    """What process-isolated programs need of a pool: a ``WorkerPool``, or a slot that
    passes calls to the pool serving now (hot reload replaces it)."""

    @property
    def limits(self) -> ProgramLimits: ...

    async def request(
        self, message: dict[str, Any], *, sources: Mapping[str, str], time_limit: float
    ) -> Any:
        """As ``WorkerPool.request``."""
        ...


def _with(body: bytes, sources: Mapping[str, str]) -> bytes:
    """``body`` (a JSON object) with a ``"sources"`` member added."""
    if not sources:
        return body
    rest = body[1:] if body[1:2] == b"}" else b"," + body[1:]
    return b'{"sources":' + encode(dict(sources)) + rest


@asynccontextmanager
async def open_worker_pool(limits: ProgramLimits | None = None) -> AsyncIterator[WorkerPool]:
    """Start a ``WorkerPool``; stop its workers on exit (see ``WorkerPool``).

    Raises:
        ProgramError: a worker could not start.
    """
    async with WorkerPool(limits) as pool:
        yield pool
