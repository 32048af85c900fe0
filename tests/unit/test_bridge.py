"""The Trio ↔ asyncio island bridge."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from aggregate.bridge import Island, IslandNotRunningError, new_event_loop

pytestmark = pytest.mark.trio


@pytest.fixture(params=["uvloop", "asyncio"])
def kind(request: pytest.FixtureRequest) -> str:
    """Every test runs on both event loops the island offers (``AGGREGATE_EVENT_LOOP``)."""
    return str(request.param)


async def test_runs_asyncio_code_on_its_own_thread_and_returns_results(kind: str) -> None:
    async with trio.open_nursery() as nursery:
        island = await nursery.start(Island(event_loop=kind).serve)

        async def on_island(x: int) -> tuple[int, int, bool]:
            await asyncio.sleep(0)
            return x * 2, threading.get_ident(), asyncio.get_running_loop() is island.loop

        doubled, thread_id, same_loop = await island.run(on_island, 21)
        assert doubled == 42
        assert thread_id != threading.get_ident()
        assert same_loop
        assert await island.call(lambda: threading.get_ident()) == thread_id
        nursery.cancel_scope.cancel()


async def test_errors_propagate(kind: str) -> None:
    async with trio.open_nursery() as nursery:
        island = await nursery.start(Island(event_loop=kind).serve)

        async def boom() -> None:
            raise KeyError("nope")

        with pytest.raises(KeyError, match="nope"):
            await island.run(boom)
        nursery.cancel_scope.cancel()


async def test_cancelling_the_trio_caller_cancels_the_island_task(kind: str) -> None:
    finished = threading.Event()
    started = trio.Event()
    async with trio.open_nursery() as nursery:
        island = await nursery.start(Island(event_loop=kind).serve)
        token = trio.lowlevel.current_trio_token()

        async def slow() -> None:
            token.run_sync_soon(started.set)
            try:
                await asyncio.sleep(3600)
            finally:
                finished.set()

        with trio.move_on_after(10):
            async with trio.open_nursery() as inner:
                inner.start_soon(island.run, slow)
                await started.wait()
                inner.cancel_scope.cancel()
        assert finished.is_set()  # the island task ran its finally before run() returned
        nursery.cancel_scope.cancel()


async def test_stopping_the_island_cancels_its_tasks_and_joins_the_thread(kind: str) -> None:
    cleaned = threading.Event()
    island = Island(event_loop=kind)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(island.serve)

            async def background() -> None:
                try:
                    await asyncio.sleep(3600)
                finally:
                    cleaned.set()

            await island.call(lambda: island.loop.create_task(background()))
            nursery.cancel_scope.cancel()
    assert cleaned.is_set()
    with pytest.raises(IslandNotRunningError):
        await island.run(asyncio.sleep, 0)


async def test_island_can_hand_work_back_to_trio(kind: str) -> None:
    got = trio.Event()
    async with trio.open_nursery() as nursery:
        island = await nursery.start(Island(event_loop=kind).serve)
        await island.call(island.to_trio_soon, got.set)
        with trio.fail_after(5):
            await got.wait()
        nursery.cancel_scope.cancel()


async def test_the_island_runs_the_loop_it_was_asked_for(kind: str) -> None:
    async with trio.open_nursery() as nursery:
        island = await nursery.start(Island(event_loop=kind).serve)
        loop_type = await island.call(lambda: type(asyncio.get_running_loop()))
        assert loop_type.__module__.split(".")[0] == kind
        nursery.cancel_scope.cancel()


async def test_an_unknown_event_loop_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown event loop"):
        new_event_loop("tokio")
