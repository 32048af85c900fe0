"""One program worker process as the pool sees it: its pipes, its framed answers, why it died.

``WorkerProcess`` sends a frame and reads frames back (``aggregate.programs.framing``),
watches the worker's stderr for the line saying why it ended, and knows which program
texts the worker has compiled. ``WorkerCrashError`` and ``WorkerTimeoutError`` are the two
ways a call can lose its worker.
"""

from __future__ import annotations

import re
import signal
from contextlib import suppress
from typing import TYPE_CHECKING

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from aggregate.domain.errors import ProgramLimitError
from aggregate.programs.framing import HEADER, frame

if TYPE_CHECKING:
    from anyio.abc import Process

STREAM_FAILURES = (
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


class WorkerDiedError(Exception):
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


class WorkerProcess:
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
        except STREAM_FAILURES:
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
            WorkerDiedError: a pipe closed, or the answer exceeds ``max_bytes``.
        """
        try:
            await self.stdin.send(frame(body))
            return await self.receive(max_bytes)
        except STREAM_FAILURES as exc:
            raise WorkerDiedError(type(exc).__name__) from None

    async def receive(self, max_bytes: int) -> bytes:
        (size,) = HEADER.unpack(await self.reader.receive_exactly(HEADER.size))
        if size > max_bytes:
            raise WorkerDiedError(f"answer of {size} bytes exceeds max_message_bytes")
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
                with suppress(*STREAM_FAILURES):
                    await self.stdin.aclose()
                await self.process.wait()
            self.kill()
            await self.process.aclose()
