"""The one module that knows two event loops exist (DESIGN §3, STYLE 4).

Trio is the control plane; nats-py and grpclib are asyncio-only, so the command path runs
on an asyncio "island": one event loop on a thread owned by a Trio task. ``Island.serve``
owns that thread: the Trio nursery cannot exit before the loop has stopped and its tasks
have finished. Trio code calls into the island with ``Island.run`` (async functions) and
``Island.call`` (plain functions); island code hands work back to Trio with
``Island.to_trio_soon``. Island state (the gate, the cache) is only ever touched on the
island; Trio sends it calls, never shares mutable objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import trio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")


class IslandNotRunningError(RuntimeError):
    """Raised when the island is used before ``serve`` started it or after it stopped."""


class Island:
    """An asyncio event loop on a Trio-owned thread."""

    def __init__(self, *, name: str = "aggregate-island", event_loop: str = "asyncio") -> None:
        """``event_loop``: ``uvloop`` or ``asyncio`` (``Settings.event_loop``)."""
        self.name = name
        self.event_loop = event_loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._loop.is_closed():
            raise IslandNotRunningError("the asyncio island is not running")
        return self._loop

    async def serve(
        self, *, task_status: trio.TaskStatus[Island] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the island until cancelled; ``started`` once the loop is running.

        Cancellation: stops the loop after cancelling every task still on it, and returns
        only when the thread has finished (so nothing on the island outlives this task).
        """
        loop = new_event_loop(self.event_loop)
        log.info("%s runs on the %s event loop", self.name, self.event_loop)
        self._token = trio.lowlevel.current_trio_token()
        running = trio.Event()
        token = self._token

        def thread_main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(token.run_sync_soon, running.set)
            try:
                loop.run_forever()
            finally:
                _finish_loop(loop)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: trio.to_thread.run_sync(thread_main, abandon_on_cancel=False)
            )
            await running.wait()
            self._loop = loop
            task_status.started(self)
            try:
                await trio.sleep_forever()
            finally:
                loop.call_soon_threadsafe(loop.stop)

    async def run(self, afn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``afn(*args)`` on the island and return its result to this Trio task.

        Raises:
            Whatever ``afn`` raises; IslandNotRunningError when the island is down.

        Cancellation: the island task is cancelled too, and this returns (raising
        ``trio.Cancelled``) only after it has finished, so no work is left behind.
        """
        loop = self.loop
        token = self._token
        assert token is not None
        done = trio.Event()
        tasks: list[asyncio.Task[T]] = []

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        async def wrapper() -> T:
            return await afn(*args, **kwargs)

        def submit() -> None:
            task = loop.create_task(wrapper())
            task.add_done_callback(wake)
            tasks.append(task)

        def cancel() -> None:  # queued after submit(), so the task exists
            tasks[0].cancel()

        loop.call_soon_threadsafe(submit)
        try:
            await done.wait()
        except trio.Cancelled:
            # Wait for the island task itself to finish, not just for the request to be
            # marked cancelled, so nothing it does outlives this call.
            loop.call_soon_threadsafe(cancel)
            with trio.CancelScope(shield=True):
                await done.wait()
            raise
        try:
            return tasks[0].result()
        except asyncio.CancelledError:
            raise IslandNotRunningError("the island cancelled the call (it is stopping)") from None

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a plain function on the island thread (to read or change island state)."""

        async def run_sync() -> T:
            return fn(*args, **kwargs)

        return await self.run(run_sync)

    def to_trio_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """From the island: schedule ``fn(*args)`` on the Trio thread (never blocks)."""
        if self._token is None:
            raise IslandNotRunningError("the island has not started")
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn, *args)


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop of ``kind``: ``uvloop`` or ``asyncio``.

    Raises:
        ValueError: for another kind.
    """
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if kind == "asyncio":
        return asyncio.new_event_loop()
    raise ValueError(f"unknown event loop {kind!r}")


def _finish_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on the loop, let it unwind, then close the loop."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    except Exception:
        log.exception("the asyncio island did not shut down cleanly")
    finally:
        loop.close()
