"""A pool of program worker processes (DESIGN §7, ``process`` isolation).

Each worker is ``python -m aggregate.programs.worker`` started with ``anyio.open_process``
(so the pool works on asyncio and under Trio), talking framed JSON over its stdin/stdout
(``aggregate.programs.framing``); it caps its own address space at start. A call takes an
idle worker (waiting for one if all are busy), sends one request (decide plus all its
applies, or a whole rehydration batch) and reads one answer under a hard deadline.

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
import math
import re
import signal
import sys
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from subprocess import PIPE
from typing import TYPE_CHECKING, Any, Protocol, Self

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from aggregate.domain.errors import InvalidArgumentError, ProgramError, ProgramLimitError
from aggregate.programs.base import ProgramLimits
from aggregate.programs.framing import HEADER, MISSING, encode, error_from_wire, frame

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping
    from types import TracebackType

    from anyio.abc import Process, TaskGroup

log = logging.getLogger(__name__)
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
_STREAM_FAILURES = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)
_STDERR_TAIL = 2048
_HEADLINE = re.compile(
    r"memory allocation of|MemoryError|panicked at|Fatal Python error|Segmentation|Traceback"
)


class _WorkerDiedError(Exception):
    """The worker's pipes closed or it sent something unreadable."""


class WorkerCrashError(ProgramLimitError):
    """The worker process running a call ended (memory exhausted, interpreter abort,
    crash). ``reason``: its exit status or signal and the telling line of its stderr."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def out_of_memory(self) -> bool:
        """Whether the worker said it could not allocate memory."""
        return "memory allocation of" in self.reason or "MemoryError" in self.reason


class WorkerTimeoutError(ProgramLimitError):
    """A call ran past its hard time limit (``time_limit`` seconds); its worker was killed."""

    def __init__(self, message: str, *, time_limit: float) -> None:
        super().__init__(message)
        self.time_limit = time_limit


class _Worker:
    """One worker process, its framed stdout reader and what it has compiled."""

    def __init__(self, process: Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self.stdin = process.stdin
        self.reader = BufferedByteReceiveStream(process.stdout)
        self.loaded: set[str] = set()
        self.stderr_tail = b""
        self.headline: str | None = None
        self.last_line: str | None = None
        self.stderr_done = anyio.Event()

    async def drain_stderr(self) -> None:
        """Watch the worker's stderr for the line saying why it died (the first line
        matching ``_HEADLINE``, else the last line); runs until stderr closes."""
        try:
            assert self.process.stderr is not None
            async for chunk in self.process.stderr:
                *lines, partial = (self.stderr_tail + chunk).split(b"\n")
                self.stderr_tail = partial[-_STDERR_TAIL:]
                for line in lines:
                    self._note(line)
        except _STREAM_FAILURES:
            pass
        finally:
            self._note(self.stderr_tail)
            self.stderr_done.set()

    def _note(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").strip()[:_STDERR_TAIL]
        if not line:
            return
        self.last_line = line
        if self.headline is None and _HEADLINE.search(line):
            self.headline = line

    async def exchange(self, body: bytes, max_bytes: int) -> bytes:
        """Send one frame and read one.

        Raises:
            _WorkerDiedError: a pipe closed, or the answer exceeds ``max_bytes``.
        """
        try:
            await self.stdin.send(frame(body))
            return await self.receive(max_bytes)
        except _STREAM_FAILURES as exc:
            raise _WorkerDiedError(type(exc).__name__) from None

    async def receive(self, max_bytes: int) -> bytes:
        (size,) = HEADER.unpack(await self.reader.receive_exactly(HEADER.size))
        if size > max_bytes:
            raise _WorkerDiedError(f"answer of {size} bytes exceeds max_message_bytes")
        return await self.reader.receive_exactly(size)

    def kill(self) -> None:
        if self.process.returncode is None:
            with suppress(ProcessLookupError):
                self.process.kill()

    async def death_reason(self) -> str:
        """Why the worker ended: exit status or signal, and the telling line of its
        stderr. Kills it if it has not ended within two seconds."""
        # Not killed first: signalling an exited, unreaped child reaps it behind asyncio's
        # child watcher, which then reports exit status 255 instead of the real one.
        with anyio.move_on_after(2):
            await self.stderr_done.wait()
            await self.process.wait()
        if self.process.returncode is None:
            self.kill()
            with anyio.move_on_after(1):
                await self.process.wait()
        code = self.process.returncode
        if code is None:
            status = "unknown status"
        elif code < 0:
            try:
                status = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                status = f"killed by signal {-code}"
        else:
            status = f"exit status {code}"
        line = self.headline or self.last_line
        return f"{status}: {line}" if line else status

    async def aclose(self) -> None:
        """Close stdin (a healthy worker exits), wait briefly, then kill and reap."""
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(1):
                with suppress(*_STREAM_FAILURES):
                    await self.stdin.aclose()
                await self.process.wait()
            self.kill()
            await self.process.aclose()


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
        self._idle_send, self._idle_receive = anyio.create_memory_object_stream[_Worker](math.inf)
        self._workers: set[_Worker] = set()
        self._closing = False
        self._calls = 0
        self._quiet: anyio.Event | None = None
        self.spawned = 0  # workers started so far (replacements included): for tests, metrics

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
                self._idle_send.send_nowait(await self._spawn())
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
            self._idle_send.close()
            self._idle_receive.close()
            for worker in list(self._workers):
                await worker.aclose()
            self._workers.clear()
            if self._tg is not None:
                self._tg.cancel_scope.cancel()

    async def _spawn(self) -> _Worker:
        assert self._tg is not None
        limits = json.dumps(self.limits.to_json())
        command = [self._python, "-m", "aggregate.programs.worker", "--limits", limits]
        process = await anyio.open_process(
            command, stdin=PIPE, stdout=PIPE, stderr=PIPE, cwd=_PACKAGE_ROOT
        )
        worker = _Worker(process)
        self._workers.add(worker)
        self.spawned += 1
        self._tg.start_soon(worker.drain_stderr)
        hello = None
        with anyio.move_on_after(self.limits.startup_timeout_seconds):
            try:
                hello = json.loads(await worker.receive(self.limits.max_message_bytes))
            except (_WorkerDiedError, *_STREAM_FAILURES, ValueError):
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

    def _release(self, worker: _Worker) -> None:
        try:
            self._idle_send.send_nowait(worker)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._retire(worker)

    def _retire(self, worker: _Worker) -> None:
        """Kill ``worker`` now (synchronously: safe on a cancelled path) and start a
        replacement in the background."""
        worker.kill()
        if self._tg is not None and not self._closing:
            self._tg.start_soon(self._replace, worker)

    async def _replace(self, old: _Worker) -> None:
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
        """Send ``message`` to an idle worker and return its answer's ``"ok"`` value.

        ``sources`` maps the source keys the message names to their texts; a worker gets
        the texts it has not compiled yet. Waiting for an idle worker is not timed (bound
        it with the caller's own deadline); the exchange is, by ``time_limit`` seconds.

        Raises:
            InvalidArgumentError: ``message`` is not plain JSON.
            WorkerTimeoutError: the exchange ran past ``time_limit`` (the worker is killed).
            WorkerCrashError: the worker died (memory exhausted, abort, crash), or its
                answer exceeds ``max_message_bytes``.
            ProgramLimitError: the request exceeds ``max_message_bytes``.
            ProgramError, ProgramCompileError, InvalidArgumentError: what the program
                raised in the worker, with its class, line and column.

        Cancellation: while waiting for a worker, nothing happens; during an exchange,
        the worker is killed at once (its state is unknown) and replaced in the
        background, and the cancellation propagates.
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
        try:
            worker = await self._idle_receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise ProgramError("the program worker pool is closed") from None
        healthy = False
        try:
            answer = await self._exchange(worker, program, body, sources, time_limit)
            healthy = True
        finally:
            if healthy:
                self._release(worker)
            else:
                self._retire(worker)
        if "error" in answer:
            raise error_from_wire(answer["error"])
        return answer["ok"]

    async def _exchange(
        self,
        worker: _Worker,
        program: str,
        body: bytes,
        sources: Mapping[str, str],
        time_limit: float,
    ) -> dict[str, Any]:
        died: str | None = None
        with anyio.move_on_after(time_limit):
            try:
                needed = {k: t for k, t in sources.items() if k not in worker.loaded}
                answer = json.loads(await worker.exchange(_with(body, needed), self._max))
                if answer.get("error", {}).get("kind") == MISSING:
                    answer = json.loads(await worker.exchange(_with(body, sources), self._max))
                if "error" not in answer or answer["error"].get("kind") != "compile":
                    worker.loaded.update(sources)
                return dict(answer)
            except _WorkerDiedError as exc:
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
        return self._idle_receive.statistics().current_buffer_used

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
