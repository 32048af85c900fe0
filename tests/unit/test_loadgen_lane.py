"""The load generator's open loop at its own limit of outstanding calls: every send due
while the pool is full is skipped and counted, including those due until the window
closes (the figures of ``bench/noisy_neighbour.py`` count the flooder's skipped sends)."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.loadgen import Window, _Lane


class _Unanswered:
    """A stub whose calls are never answered."""

    def __init__(self) -> None:
        self.calls = 0

    async def SubmitCommand(  # the stub's method name
        self,
        req: Any,
        *,
        metadata: Any,
        timeout: float,  # noqa: ASYNC109 (grpclib's stub's signature)
    ) -> Any:
        self.calls += 1
        await asyncio.Event().wait()


async def _run_full_pool() -> tuple[_Unanswered, _Lane, Window]:
    stub = _Unanswered()
    window = Window({"warmup_s": 0.05, "duration_s": 0.3})
    lane = _Lane([stub], "t", ["a"], 500.0, window, max_pending=3)
    await asyncio.gather(window.run(), lane.schedule())
    for task in list(lane.pending):
        task.cancel()
    await asyncio.gather(*lane.pending, return_exceptions=True)
    return stub, lane, window


def test_sends_due_while_the_pool_is_full_are_skipped_until_the_window_closes() -> None:
    stub, lane, window = asyncio.run(_run_full_pool())
    assert stub.calls == 3  # the pool filled and nothing was answered
    assert window.opened_at is not None
    assert window.closed_at is not None
    due_in_window = 500.0 * (window.closed_at - window.opened_at)
    assert abs(lane.skipped - due_in_window) <= 1  # every tick inside [opened, closed)
