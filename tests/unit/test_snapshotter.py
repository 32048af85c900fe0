"""The snapshotter: offers from any thread, latest-wins, failures, shutdown flush."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from aggregate.adapters.snapshotter import Snapshotter
from aggregate.adapters.sqlite_snapshots import SqliteSnapshotStore, open_sqlite_snapshot_store
from aggregate.domain.aggregate import Snapshot
from aggregate.domain.envelopes import utc_now_rfc3339
from aggregate.domain.errors import BackendUnavailableError
from aggregate.domain.history import FrozenHistory
from aggregate.domain.ids import AggregateKey, uuid7


def make_snapshot(key: AggregateKey, version: int) -> Snapshot:
    return Snapshot(
        key=key,
        version=version,
        stream_seq=version,
        state={"version": version},
        history=FrozenHistory(()),
        created_at=utc_now_rfc3339(),
    )


def make_key(tenant: str = "acme") -> AggregateKey:
    return AggregateKey(tenant, "account", uuid7())


def offer_all(snapshotter: Snapshotter, snapshots: list[Snapshot]) -> None:
    for snapshot in snapshots:
        snapshotter.offer(snapshot)


class RecordingStore:
    """Delegates to a real store (or fails for chosen keys) and lets a test wait until
    the saves it expects have happened."""

    def __init__(
        self,
        inner: SqliteSnapshotStore | None = None,
        *,
        fail_for: frozenset[uuid.UUID] = frozenset(),
    ) -> None:
        self.inner = inner
        self.fail_for = fail_for
        self.saved: list[tuple[AggregateKey, int]] = []
        self.attempts = 0
        self._changed = trio.Event()

    async def load(self, key: AggregateKey) -> Snapshot | None:
        return None if self.inner is None else await self.inner.load(key)

    async def save(self, snapshot: Snapshot) -> bool:
        self.attempts += 1
        try:
            if snapshot.key.aggregate_id in self.fail_for:
                raise BackendUnavailableError("disk on fire")
            written = True if self.inner is None else await self.inner.save(snapshot)
            if written:
                self.saved.append((snapshot.key, snapshot.version))
            return written
        finally:
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()


class HangingStore:
    """A store whose writes block until cancelled (a wedged disk)."""

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.release = trio.Event()

    async def load(self, key: AggregateKey) -> Snapshot | None:
        return None

    async def save(self, snapshot: Snapshot) -> bool:
        self.entered.set()
        await self.release.wait()
        return True


@pytest.mark.trio
async def test_offers_from_a_thread_and_from_trio_are_written(tmp_path: Path) -> None:
    thread_keys = [make_key() for _ in range(50)]
    trio_keys = [make_key("other") for _ in range(5)]
    async with open_sqlite_snapshot_store(tmp_path) as db:
        store = RecordingStore(db)
        snapshotter = Snapshotter(store)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                assert await nursery.start(snapshotter.serve) is snapshotter
                thread = threading.Thread(
                    target=offer_all, args=(snapshotter, [make_snapshot(k, 3) for k in thread_keys])
                )
                thread.start()
                for key in trio_keys:
                    snapshotter.offer(make_snapshot(key, 2))
                await trio.to_thread.run_sync(thread.join)
                await store.wait_for(lambda: len(store.saved) == 55)
                nursery.cancel_scope.cancel()
        for key in thread_keys:
            loaded = await db.load(key)
            assert loaded is not None
            assert loaded.version == 3
        for key in trio_keys:
            loaded = await db.load(key)
            assert loaded is not None
            assert loaded.version == 2
    stats = snapshotter.stats
    assert (stats.offered, stats.written, stats.pending, stats.failed) == (55, 55, 0, 0)
    assert stats.lag_seconds == 0.0


@pytest.mark.trio
async def test_latest_version_wins_per_key() -> None:
    store = RecordingStore()
    snapshotter = Snapshotter(store)
    a, b = make_key(), make_key()
    for key, version in [(a, 3), (a, 7), (b, 1), (a, 5), (b, 2)]:
        snapshotter.offer(make_snapshot(key, version))
    assert snapshotter.stats.pending == 2
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(snapshotter.serve)
            await store.wait_for(lambda: len(store.saved) == 2)
            nursery.cancel_scope.cancel()
    assert sorted(store.saved) == sorted([(a, 7), (b, 2)])
    assert store.attempts == 2


@pytest.mark.trio
async def test_shutdown_flushes_pending_snapshots_before_serve_returns(tmp_path: Path) -> None:
    """The write in progress at cancellation goes back to the pending set; the shielded
    flush then writes it and everything else that was waiting."""
    keys = [make_key() for _ in range(6)]
    async with open_sqlite_snapshot_store(tmp_path) as db:

        class FirstWriteWedged(RecordingStore):
            async def save(self, snapshot: Snapshot) -> bool:
                if self.attempts == 0:
                    self.attempts += 1
                    entered.set()
                    await trio.sleep_forever()
                return await super().save(snapshot)

        entered = trio.Event()
        snapshotter = Snapshotter(FirstWriteWedged(db))
        for key in keys[:3]:
            snapshotter.offer(make_snapshot(key, 4))
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(snapshotter.serve)
                await entered.wait()
                thread = threading.Thread(
                    target=offer_all, args=(snapshotter, [make_snapshot(k, 4) for k in keys[3:]])
                )
                thread.start()
                await trio.to_thread.run_sync(thread.join)
                assert snapshotter.stats.pending == 5
                nursery.cancel_scope.cancel()
        assert snapshotter.last_flush is not None
        assert snapshotter.last_flush.written == 6
        assert snapshotter.last_flush.left == 0
        assert not snapshotter.last_flush.timed_out
    async with open_sqlite_snapshot_store(tmp_path) as reopened:
        assert await reopened.count() == 6
        for key in keys:
            loaded = await reopened.load(key)
            assert loaded is not None
            assert loaded.version == 4


@pytest.mark.trio
async def test_failing_store_is_counted_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad, good, later = make_key(), make_key(), make_key()
    store = RecordingStore(fail_for=frozenset({bad.aggregate_id}))
    snapshotter = Snapshotter(store)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(snapshotter.serve)
            snapshotter.offer(make_snapshot(bad, 1))
            snapshotter.offer(make_snapshot(good, 1))
            await store.wait_for(lambda: store.attempts == 2)
            snapshotter.offer(make_snapshot(later, 1))
            await store.wait_for(lambda: len(store.saved) == 2)
            nursery.cancel_scope.cancel()
    assert store.saved == [(good, 1), (later, 1)]
    stats = snapshotter.stats
    assert (stats.failed, stats.written, stats.pending) == (1, 2, 0)
    assert "disk on fire" in caplog.text
    assert str(bad) in caplog.text


@pytest.mark.trio
async def test_flush_honours_its_timeout_with_a_hanging_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = HangingStore()
    snapshotter = Snapshotter(store, flush_timeout=5.0)
    for _ in range(3):
        snapshotter.offer(make_snapshot(make_key(), 1))
    start = trio.current_time()
    result = await snapshotter.flush()
    assert trio.current_time() - start == pytest.approx(5.0)
    assert (result.written, result.left, result.timed_out) == (0, 3, True)
    assert snapshotter.stats.pending == 3


@pytest.mark.trio
async def test_shutdown_flush_is_bounded_by_its_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = HangingStore()
    snapshotter = Snapshotter(store, flush_timeout=2.0)
    for _ in range(2):
        snapshotter.offer(make_snapshot(make_key(), 1))
    async with trio.open_nursery() as nursery:
        await nursery.start(snapshotter.serve)
        await store.entered.wait()
        nursery.cancel_scope.cancel()
        cancelled_at = trio.current_time()
    assert trio.current_time() - cancelled_at == pytest.approx(2.0)
    assert snapshotter.last_flush is not None
    assert (snapshotter.last_flush.left, snapshotter.last_flush.timed_out) == (2, True)


@pytest.mark.trio
async def test_bounded_pending_drops_oldest_and_reports_lag() -> None:
    now = [100.0]
    store = RecordingStore()
    snapshotter = Snapshotter(store, max_pending=2, clock=lambda: now[0])
    first, second, third = make_key(), make_key(), make_key()
    snapshotter.offer(make_snapshot(first, 1))
    now[0] = 101.0
    snapshotter.offer(make_snapshot(second, 1))
    now[0] = 102.0
    snapshotter.offer(make_snapshot(second, 2))  # replaces, keeps its waiting time
    snapshotter.offer(make_snapshot(third, 1))  # full: the oldest (first) is dropped
    now[0] = 104.5
    stats = snapshotter.stats
    assert (stats.pending, stats.dropped, stats.offered) == (2, 1, 4)
    assert stats.lag_seconds == pytest.approx(3.5)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(snapshotter.serve)
            await store.wait_for(lambda: len(store.saved) == 2)
            nursery.cancel_scope.cancel()
    assert store.saved == [(second, 2), (third, 1)]
    assert snapshotter.stats.lag_seconds == 0.0


@pytest.mark.trio
async def test_serve_twice_at_once_is_refused() -> None:
    snapshotter = Snapshotter(RecordingStore())
    async with trio.open_nursery() as nursery:
        await nursery.start(snapshotter.serve)
        with pytest.raises(RuntimeError, match="already running"):
            await snapshotter.serve()
        nursery.cancel_scope.cancel()


def test_offer_without_a_running_trio_keeps_the_snapshot() -> None:
    snapshotter = Snapshotter(RecordingStore())
    snapshotter.offer(make_snapshot(make_key(), 1))
    assert snapshotter.stats.pending == 1
