"""SqliteSnapshotStore against real SQLite files in tmp_path."""

from __future__ import annotations

import random
import sqlite3
import threading
import uuid
from pathlib import Path

import anyio
import pytest
import trio

from aggregate.adapters.sqlite_snapshots import (
    SqliteSnapshotStore,
    open_sqlite_snapshot_store,
)
from aggregate.domain.aggregate import AggregateInstance, Snapshot
from aggregate.domain.envelopes import utc_now_rfc3339
from aggregate.domain.errors import BackendUnavailableError, ConfigError, InvalidArgumentError
from aggregate.domain.history import CommandHistory, HistoryEntry
from aggregate.domain.ids import AggregateKey, uuid7


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_key(tenant: str = "acme", aggregate_id: uuid.UUID | None = None) -> AggregateKey:
    return AggregateKey(tenant, "account", aggregate_id or uuid7())


def make_snapshot(
    key: AggregateKey, version: int, state: dict[str, object] | None = None
) -> Snapshot:
    history = CommandHistory(3)
    for v in range(1, version + 1):
        history.remember(HistoryEntry(uuid7(), v, v, v * 10))
    return Snapshot(
        key=key,
        version=version,
        stream_seq=version * 10,
        state=state if state is not None else {"version": version},
        history=history.freeze(),
        created_at=utc_now_rfc3339(),
    )


def raw(tmp_path: Path) -> sqlite3.Connection:
    """An independent connection, to look at or damage the file behind the store's back."""
    return sqlite3.connect(tmp_path / "snapshots.db", isolation_level=None)


@pytest.mark.anyio
async def test_round_trip_with_history_under_both_backends(tmp_path: Path) -> None:
    key = make_key()
    state = {"balance": 2**70, "owner": "Zoë", "tags": ["a", "b"], "nested": {"x": None}}
    snapshot = make_snapshot(key, 5, state)
    async with open_sqlite_snapshot_store(tmp_path) as store:
        assert await store.save(snapshot) is True
        loaded = await store.load(key)
        assert await store.load(make_key()) is None
    assert loaded == snapshot
    assert loaded.state["balance"] == 2**70
    rebuilt = AggregateInstance.from_snapshot(loaded, key=key, history_limit=3)
    assert rebuilt.version == 5
    assert rebuilt.last_seq == 50
    assert [e.first_version for e in rebuilt.history.entries()] == [3, 4, 5]
    assert rebuilt.history.horizon_ms > 0


@pytest.mark.trio
async def test_file_is_in_wal_mode_under_the_storage_path(tmp_path: Path) -> None:
    async with open_sqlite_snapshot_store(tmp_path / "nested" / "dir") as store:
        await store.save(make_snapshot(make_key(), 1))
        assert store.path == tmp_path / "nested" / "dir" / "snapshots.db"
        conn = raw(tmp_path / "nested" / "dir")
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            conn.close()


@pytest.mark.trio
async def test_older_or_equal_version_never_replaces_newer(tmp_path: Path) -> None:
    key = make_key()
    async with open_sqlite_snapshot_store(tmp_path) as store:
        assert await store.save(make_snapshot(key, 5, {"v": "five"})) is True
        assert await store.save(make_snapshot(key, 3, {"v": "three"})) is False
        assert await store.save(make_snapshot(key, 5, {"v": "five again"})) is False
        loaded = await store.load(key)
        assert loaded is not None
        assert (loaded.version, loaded.state) == (5, {"v": "five"})
        assert await store.save(make_snapshot(key, 6, {"v": "six"})) is True
        loaded = await store.load(key)
        assert loaded is not None
        assert (loaded.version, loaded.state) == (6, {"v": "six"})


def _write_versions(
    store: SqliteSnapshotStore, key: AggregateKey, versions: list[int], backend: str
) -> None:
    """In a plain thread: an event loop of its own (asyncio or Trio) using the shared store."""

    async def main() -> None:
        for version in versions:
            await store.save(make_snapshot(key, version, {"v": version}))

    anyio.run(main, backend=backend)


@pytest.mark.trio
async def test_racing_writers_leave_the_max_version(tmp_path: Path) -> None:
    """Threads with their own event loops and Trio tasks write shuffled versions at once.
    Every writer ends on a low version, so a last-writer-wins store would fail this."""
    rng = random.Random(1234)
    key = make_key()
    top = 400
    writers = 8
    chunks: list[list[int]] = [[] for _ in range(writers)]
    for version in range(1, top):
        chunks[rng.randrange(writers)].append(version)
    for chunk in chunks:
        rng.shuffle(chunk)
        chunk.append(rng.randrange(1, 20))  # everyone finishes with a stale write
    chunks[0].insert(0, top)  # the newest is written first
    async with open_sqlite_snapshot_store(tmp_path, max_threads=4) as store:
        threads = [
            threading.Thread(target=_write_versions, args=(store, key, chunk, backend))
            for chunk, backend in zip(chunks[:4], ["asyncio", "trio"] * 2, strict=True)
        ]
        for thread in threads:
            thread.start()

        async def task_writer(chunk: list[int]) -> None:
            for version in chunk:
                await store.save(make_snapshot(key, version, {"v": version}))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for chunk in chunks[4:]:
                    nursery.start_soon(task_writer, chunk)
            for thread in threads:
                await trio.to_thread.run_sync(thread.join)
        loaded = await store.load(key)
        assert await store.count() == 1
    assert loaded is not None
    assert (loaded.version, loaded.state) == (top, {"v": top})


@pytest.mark.trio
@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("state", "{not json"),
        ("state", "[1, 2]"),
        ("history", '{"entries": 5}'),
        ("history", '{"entries": [["not-a-uuid", 1, 1, 1]]}'),
        ("history", '{"entries": [[7, 1, 1, 1]]}'),
        ("version", "seven"),
        ("stream_seq", -1),
        ("state", "[" * 100_000),
    ],
)
async def test_corrupt_row_reads_as_none_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, column: str, value: object
) -> None:
    key = make_key()
    async with open_sqlite_snapshot_store(tmp_path) as store:
        await store.save(make_snapshot(key, 4))
        conn = raw(tmp_path)
        try:
            conn.execute(f"UPDATE snapshots SET {column} = ?", (value,))
        finally:
            conn.close()
        with caplog.at_level("WARNING", logger="aggregate.adapters.sqlite_snapshots"):
            assert await store.load(key) is None
        assert str(key) in caplog.text
        # A newer snapshot repairs the row.
        assert await store.save(make_snapshot(key, 9)) is True
        loaded = await store.load(key)
        assert loaded is not None
        assert loaded.version == 9


@pytest.mark.trio
async def test_same_aggregate_id_under_two_tenants_is_two_rows(tmp_path: Path) -> None:
    aggregate_id = uuid7()
    a, b = make_key("tenant-a", aggregate_id), make_key("tenant-b", aggregate_id)
    async with open_sqlite_snapshot_store(tmp_path) as store:
        assert await store.save(make_snapshot(a, 2, {"owner": "a"})) is True
        assert await store.save(make_snapshot(b, 1, {"owner": "b"})) is True
        loaded_a, loaded_b = await store.load(a), await store.load(b)
        assert await store.load(make_key("tenant-c", aggregate_id)) is None
        assert (await store.count(), await store.count("tenant-a")) == (2, 1)
        assert await store.delete(a) is True
        assert await store.delete(a) is False
        assert await store.load(a) is None
        assert await store.load(b) == loaded_b
    assert loaded_a is not None
    assert loaded_b is not None
    assert (loaded_a.key, loaded_a.state) == (a, {"owner": "a"})
    assert (loaded_b.key, loaded_b.state) == (b, {"owner": "b"})


@pytest.mark.trio
async def test_delete_tenant_erases_its_rows_and_their_bytes(tmp_path: Path) -> None:
    marker = "erase-me-" + uuid.uuid4().hex
    gone = [make_key("gone") for _ in range(5)]
    kept = [make_key("kept") for _ in range(40)]

    def file_bytes() -> bytes:
        return b"".join(p.read_bytes() for p in tmp_path.glob("snapshots.db*"))

    async with open_sqlite_snapshot_store(tmp_path) as store:
        # Few erased rows among many kept ones: their pages stay in use, so only an
        # overwrite (secure_delete) removes the bytes. Updates leave old bytes too.
        for version in (1, 2):
            for n, key in enumerate(gone):
                await store.save(make_snapshot(key, version, {"secret": marker, "v": version}))
                for other in kept[n * 8 : n * 8 + 8]:
                    await store.save(make_snapshot(other, version))
        conn = raw(tmp_path)  # move everything into the main file first
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.close()
        assert marker.encode() in (tmp_path / "snapshots.db").read_bytes()
        assert await store.delete_tenant("gone") == 5
        assert marker.encode() not in file_bytes()
        stats = await store.stats()
        assert (stats.rows, stats.tenants) == (40, 1)
        assert stats.file_bytes > 0
        assert stats.path == str(tmp_path / "snapshots.db")
        for key in kept:
            assert await store.load(key) is not None
        assert await store.load(gone[0]) is None


@pytest.mark.trio
async def test_data_outlives_the_store_and_closed_store_answers_none(tmp_path: Path) -> None:
    key = make_key()
    store = await SqliteSnapshotStore.open(tmp_path)
    await store.save(make_snapshot(key, 3))
    await store.aclose()
    await store.aclose()  # idempotent
    assert await store.load(key) is None
    with pytest.raises(BackendUnavailableError, match="closed"):
        await store.save(make_snapshot(key, 4))
    async with open_sqlite_snapshot_store(tmp_path) as reopened:
        loaded = await reopened.load(key)
    assert loaded is not None
    assert loaded.version == 3


@pytest.mark.trio
async def test_unserialisable_state_is_an_invalid_argument(tmp_path: Path) -> None:
    key = make_key()
    async with open_sqlite_snapshot_store(tmp_path) as store:
        with pytest.raises(InvalidArgumentError, match=str(key)):
            await store.save(make_snapshot(key, 1, {"when": object()}))
        assert await store.count() == 0


@pytest.mark.trio
async def test_storage_path_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not-a-dir"):
        await SqliteSnapshotStore.open(blocker)


@pytest.mark.trio
async def test_garbage_database_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "snapshots.db").write_bytes(b"this is not a sqlite database" * 100)
    with pytest.raises(ConfigError, match=r"snapshots\.db"):
        await SqliteSnapshotStore.open(tmp_path)


@pytest.mark.trio
async def test_incompatible_table_is_a_config_error(tmp_path: Path) -> None:
    conn = raw(tmp_path)
    conn.execute("CREATE TABLE snapshots (tenant_id TEXT PRIMARY KEY, blob TEXT)")
    conn.close()
    with pytest.raises(ConfigError, match="cannot use"):
        await SqliteSnapshotStore.open(tmp_path)


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_threads"):
        SqliteSnapshotStore(tmp_path, max_threads=0)
    with pytest.raises(ConfigError, match="busy_timeout"):
        SqliteSnapshotStore(tmp_path, busy_timeout=-1)


@pytest.mark.trio
async def test_broken_database_load_is_none_and_writes_raise_backend_unavailable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = make_key()
    async with open_sqlite_snapshot_store(tmp_path) as store:
        await store.save(make_snapshot(key, 1))
        conn = raw(tmp_path)
        try:
            conn.execute("DROP TABLE snapshots")
        finally:
            conn.close()
        with caplog.at_level("WARNING", logger="aggregate.adapters.sqlite_snapshots"):
            assert await store.load(key) is None
        assert "no such table" in caplog.text
        with pytest.raises(BackendUnavailableError, match=r"snapshots\.db.*no such table"):
            await store.save(make_snapshot(key, 2))
        with pytest.raises(BackendUnavailableError, match="no such table"):
            await store.delete_tenant("acme")
