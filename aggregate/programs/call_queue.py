"""Calls waiting for a program worker, and how they are gathered into batches.

A call that finds a worker idle (and no call ahead of it) takes it. Otherwise it queues;
a worker set free is handed to the first queued call, which then *leads* a batch: it takes
up to ``max_calls - 1`` further queued calls with it (``take``), in their order, within the
frame-size limit. The leader runs the batch and answers each call it took; the waiters of
those calls wake with their own answers. A batch that loses its worker puts its calls (the
leader first) back at the head of the queue marked ``alone`` (``requeue``): each runs again
in a batch of its own, in the same order, so one program's fault fails only its own call.

All of it runs on one event loop (the pool's); nothing here does I/O.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from aggregate.programs.worker_process import WorkerProcess

BATCH_OVERHEAD_BYTES = 64
"""Room left in a frame for the batch's own JSON around the calls."""


class QueuedCall:
    """One call of ``WorkerPool.request``: its encoded message and, once run, its answer.

    ``state``: new, queued, leading (it holds a worker), taken (into another call's
    batch), answered, abandoned (cancelled while taken), closed (the pool closed).
    """

    __slots__ = ("alone", "answer", "body", "sources", "state", "time_limit", "wake", "worker")

    def __init__(self, body: bytes, sources: Mapping[str, str], time_limit: float) -> None:
        self.body = body
        self.sources = sources
        self.time_limit = time_limit
        self.alone = False
        self.state = "new"
        self.worker: WorkerProcess | None = None
        self.answer: dict[str, Any] | None = None
        self.wake = anyio.Event()

    def answered(self, answer: dict[str, Any]) -> None:
        """Give the call its answer and wake its waiter (a cancelled waiter's is dropped)."""
        if self.state != "abandoned":
            self.answer = answer
            self.state = "answered"
            self.wake.set()


class BatchLostError(Exception):
    """A batch of several calls lost its worker; each call is to run again alone."""


class CallQueue:
    """The idle workers and the calls waiting for one."""

    def __init__(self) -> None:
        self.idle: list[WorkerProcess] = []
        self._calls: deque[QueuedCall] = deque()
        self._closed = False

    def __len__(self) -> int:
        """How many calls wait."""
        return len(self._calls)

    def release(self, worker: WorkerProcess) -> bool:
        """``worker`` is free: hand it to the first queued call, or keep it idle. False if
        the queue is closed (the caller disposes of the worker)."""
        if self._closed:
            return False
        self.idle.append(worker)
        self._dispatch()
        return True

    def _dispatch(self) -> None:
        while self.idle and self._calls:
            call = self._calls.popleft()
            call.worker = self.idle.pop()
            call.state = "leading"
            call.wake.set()

    async def worker_for(self, call: QueuedCall) -> WorkerProcess | None:
        """A worker for ``call`` to lead a batch with, or None once ``call`` was answered
        by another call's batch (or the queue closed) while it waited.

        Cancellation: a queued call leaves the queue; a worker handed over meanwhile goes
        on to the next call; a call already taken into a batch is dropped from it.
        """
        if self._closed:
            call.state = "closed"
            return None
        if call.state == "new":  # one put back by ``requeue`` is queued (or handed) already
            if self.idle and not self._calls:
                call.state = "leading"
                return self.idle.pop()
            call.state = "queued"
            call.wake = anyio.Event()
            self._calls.append(call)
        try:
            await call.wake.wait()
        except BaseException:
            if call.state == "queued":
                self._calls.remove(call)
            elif call.state == "leading" and call.worker is not None:
                worker, call.worker = call.worker, None
                if not self.release(worker):
                    worker.kill()
            elif call.state == "taken":
                call.state = "abandoned"
            raise
        handed, call.worker = call.worker, None
        return handed if call.state == "leading" else None

    def take(self, leader: QueuedCall, *, max_calls: int, max_bytes: int) -> list[QueuedCall]:
        """``leader`` and the queued calls that go with it (none if it runs alone): at
        most ``max_calls`` in all, their bodies within ``max_bytes``."""
        batch = [leader]
        if leader.alone:
            return batch
        budget = max_bytes - len(leader.body) - BATCH_OVERHEAD_BYTES
        while self._calls and len(batch) < max_calls:
            follower = self._calls[0]
            if follower.alone or len(follower.body) + 1 > budget:
                break
            self._calls.popleft()
            follower.state = "taken"
            budget -= len(follower.body) + 1
            batch.append(follower)
        return batch

    def requeue(self, followers: Sequence[QueuedCall], *, leader: QueuedCall | None = None) -> None:
        """Put the calls of a batch that lost its worker back at the queue's head, in their
        order, each to run alone: the calls it had taken (dropped, cancelled ones stay
        dropped) and, when given, the ``leader`` that ran it (it then waits in
        ``worker_for`` again). Anyone waiting gets the next free worker in that order. On a
        closed queue the followers wake as closed instead (their callers fail, as every
        waiting call of a closed pool does; the leader finds the queue closed in
        ``worker_for``)."""
        if self._closed:
            for follower in followers:
                if follower.state == "taken":
                    follower.state = "closed"
                    follower.wake.set()
            return
        for follower in reversed(followers):
            if follower.state == "taken":
                follower.state = "queued"
                follower.alone = True  # its waiter still waits on its first ``wake``
                self._calls.appendleft(follower)
        if leader is not None:
            leader.state = "queued"
            leader.alone = True
            leader.wake = anyio.Event()
            self._calls.appendleft(leader)
        self._dispatch()

    def close(self) -> None:
        """Refuse new calls; wake every waiting call as closed; forget the idle workers."""
        self._closed = True
        while self._calls:
            call = self._calls.popleft()
            call.state = "closed"
            call.wake.set()
        self.idle.clear()
