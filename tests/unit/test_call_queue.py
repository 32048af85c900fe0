"""The queue of calls waiting for program workers, driven as the pool drives it, under
random arrivals, worker counts, batch limits, poisoned calls and cancellations."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregate.programs.call_queue import CallQueue, QueuedCall

pytestmark = pytest.mark.anyio


class Worker:
    """A stand-in for a worker process (the queue only hands it around)."""

    def kill(self) -> None:
        raise AssertionError("a worker of an open queue is never killed")


async def run_call(
    queue: CallQueue, call: QueuedCall, *, max_calls: int, poison: set[bytes], log: list[Any]
) -> None:
    """What ``WorkerPool._request`` does with a call, with an exchange that answers each
    call its own body, and loses the worker when a poisoned call shares a batch."""
    while True:
        worker = await queue.worker_for(call)
        if worker is None:
            return
        batch = queue.take(call, max_calls=max_calls, max_bytes=1 << 20)
        log.append(tuple(c.body for c in batch))
        try:
            await anyio.lowlevel.checkpoint()  # the round trip: other calls arrive meanwhile
        except BaseException:  # cancelled while leading: the pool kills and replaces
            queue.requeue(batch[1:])
            queue.release(Worker())
            raise
        if len(batch) > 1 and poison & {c.body for c in batch}:
            queue.requeue(batch[1:], leader=call)
            queue.release(Worker())  # the lost worker's replacement
            continue
        for one in batch:
            one.answered({"ok": one.body})
        queue.release(worker)
        return


@settings(max_examples=60, deadline=None)
@given(
    calls=st.integers(1, 30),
    workers=st.integers(1, 3),
    max_calls=st.integers(1, 6),
    poison=st.sets(st.integers(0, 29), max_size=3),
    cancel=st.sets(st.integers(0, 29), max_size=3),
    arrivals=st.lists(st.integers(0, 3), min_size=30, max_size=30),
)
def test_every_call_gets_its_own_answer_in_batches_within_the_limit(
    calls: int,
    workers: int,
    max_calls: int,
    poison: set[int],
    cancel: set[int],
    arrivals: list[int],
) -> None:
    bodies = [str(n).encode() for n in range(calls)]
    poisoned = {bodies[n] for n in poison if n < calls}
    log: list[tuple[bytes, ...]] = []
    made: list[QueuedCall] = []
    results: dict[bytes, object] = {}

    async def one(n: int) -> None:
        call = QueuedCall(bodies[n], {}, 1.0)
        made.append(call)
        with anyio.CancelScope() as scope:
            if n in cancel:
                scope.cancel()  # cancelled wherever it waits: queued, taken or leading
            await run_call(queue, call, max_calls=max_calls, poison=poisoned, log=log)
            results[bodies[n]] = call.answer
            return
        results[bodies[n]] = "cancelled"

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for n in range(calls):
                tg.start_soon(one, n)
                for _ in range(arrivals[n]):
                    await anyio.lowlevel.checkpoint()

    queue = CallQueue()
    for _ in range(workers):
        queue.release(Worker())
    anyio.run(main)

    assert len(queue) == 0
    assert len(queue.idle) == workers  # every worker came back
    for n, body in enumerate(bodies):
        if n in cancel:
            assert results[body] in ("cancelled", {"ok": body})
        else:
            assert results[body] == {"ok": body}  # its own answer, nobody else's
    answered = [b for batch in log for b in batch]
    for batch in log:
        assert 1 <= len(batch) <= max_calls
    for body in poisoned:
        shared = [batch for batch in log if body in batch and len(batch) > 1]
        assert len(shared) <= 1  # after losing one batch it only ever runs alone
    if workers == 1:  # one worker: calls are served in the order they came
        served = [b for b in bodies if b in answered]
        assert sorted(served, key=answered.index) == served


async def test_calls_put_back_after_the_queue_closed_wake_as_closed() -> None:
    """The pool closes while a batch runs; the batch loses its worker and puts its
    followers back: they end (their caller fails with ``ProgramError``), not wait on."""
    queue = CallQueue()
    queue.release(Worker())  # type: ignore[arg-type]
    leader, follower = QueuedCall(b"1", {}, 1.0), QueuedCall(b"2", {}, 1.0)
    assert await queue.worker_for(leader) is not None
    handed: list[object] = []

    async def wait_for_a_worker() -> None:
        handed.append(await queue.worker_for(follower))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_a_worker)
            while len(queue) == 0:
                await anyio.lowlevel.checkpoint()
            batch = queue.take(leader, max_calls=4, max_bytes=1 << 20)
            assert batch == [leader, follower]
            queue.close()
            queue.requeue(batch[1:])
    assert handed == [None]
    assert follower.state == "closed"
