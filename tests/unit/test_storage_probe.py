"""The storage check behind ``GET /health`` ``storage``: real SQLite files, and failures
injected at the adapter boundary (the blocking check the probe runs)."""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

import pytest
import trio

from aggregate.adapters.sqlite_snapshot_file import DATABASE_NAME
from aggregate.adapters.sqlite_snapshots import SqliteSnapshotStore
from aggregate.adapters.storage_probe import (
    PROBE_TABLE,
    StorageCheckError,
    StorageProbe,
    StorageStatus,
    check_database,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.trio


class Clock:
    now = 1_767_323_045.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


class Scripted:
    """A check that fails while ``failure`` is set (with its ``reachable``)."""

    def __init__(self) -> None:
        self.failure: StorageCheckError | None = None
        self.calls = 0

    def __call__(self, path: Any, busy_timeout: float, stamp: str) -> None:
        self.calls += 1
        if self.failure is not None:
            raise self.failure


async def test_a_failed_check_turns_writable_false_and_the_error_stays_after_recovery(
    tmp_path: Path,
) -> None:
    check = Scripted()
    probe = StorageProbe(tmp_path, interval_s=60, timeout_s=5, clock=Clock(), check=check)
    assert probe.status == StorageStatus()  # before the first check: unknown
    ok = await probe.check()
    assert (ok.reachable, ok.writable, ok.last_error) == (True, True, None)
    check.failure = StorageCheckError(
        "cannot write: attempt to write a readonly database", reachable=True
    )
    failed = await probe.check()
    assert (failed.reachable, failed.writable) == (True, False)
    assert failed.last_error == "cannot write: attempt to write a readonly database"
    assert failed.last_error_at == failed.checked_at == "2026-01-02T03:04:07.000Z"
    check.failure = None
    again = await probe.check()
    assert (again.reachable, again.writable) == (True, True)
    assert again.last_error == failed.last_error  # the last error, and when, are kept
    assert again.last_error_at == "2026-01-02T03:04:07.000Z"
    assert again.checked_at == "2026-01-02T03:04:08.000Z"
    assert probe.status is again
    assert str(tmp_path) not in str(again.as_dict())


async def test_a_check_that_does_not_finish_in_time_counts_as_failed(tmp_path: Path) -> None:
    release = threading.Event()

    def stuck(path: Any, busy_timeout: float, stamp: str) -> None:
        release.wait(30)

    probe = StorageProbe(tmp_path, interval_s=60, timeout_s=0.2, check=stuck)
    try:
        with trio.fail_after(10):
            status = await probe.check()
    finally:
        release.set()
    assert (status.reachable, status.writable) == (False, False)
    assert status.last_error == "the check did not finish within 0.2 s"


async def test_serve_checks_before_it_reports_started(tmp_path: Path) -> None:
    check = Scripted()
    check.failure = StorageCheckError("cannot open: unable to open database file", reachable=False)
    probe = StorageProbe(tmp_path, interval_s=60, timeout_s=5, check=check)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(probe.serve)
            assert check.calls == 1
            assert (probe.status.reachable, probe.status.writable) == (False, False)
            nursery.cancel_scope.cancel()


async def test_the_real_check_reads_writes_and_never_creates_the_database(
    tmp_path: Path,
) -> None:
    store = await SqliteSnapshotStore.open(tmp_path)
    try:
        probe = StorageProbe(tmp_path, interval_s=60, timeout_s=5)
        status = await probe.check()
        assert (status.reachable, status.writable) == (True, True)
        with sqlite3.connect(tmp_path / DATABASE_NAME) as conn:
            (stamp,) = conn.execute(f"SELECT checked_at FROM {PROBE_TABLE}").fetchone()
        assert stamp == status.checked_at
    finally:
        await store.aclose()

    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in os.listdir(tmp_path):  # the database and its WAL files
        if name.startswith(DATABASE_NAME):
            (tmp_path / name).rename(moved / name)
    status = await probe.check()
    assert (status.reachable, status.writable) == (False, False)
    assert status.last_error == "cannot open: unable to open database file"
    assert not (tmp_path / DATABASE_NAME).exists()  # not recreated empty

    (tmp_path / DATABASE_NAME).write_bytes(b"not a database, just bytes " * 100)
    status = await probe.check()
    assert (status.reachable, status.writable) == (False, False)
    assert status.last_error == "cannot read: file is not a database"


async def test_check_database_refuses_a_database_without_the_snapshot_table(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_NAME
    sqlite3.connect(path).close()
    with pytest.raises(StorageCheckError) as info:
        check_database(path, 1.0, "now")
    assert info.value.reachable is False
    assert info.value.reason.startswith("cannot read: no such table")
