"""The storage check: is the snapshot database reachable and writable (``GET /health``).

Every ``interval_s`` the probe opens a fresh connection to ``<storage_path>/snapshots.db``
(never the store's pooled ones: those keep the file they opened even after it was moved or
replaced), reads the snapshot table and writes one row of its own ``storage_probe`` table.
Opening does not create a missing file (``mode=rw``), so a database that was moved away
reads as unreachable rather than silently recreated empty. Each check is bounded by
``timeout_s``; one that does not finish in time counts as failed.

The result is published as one immutable ``StorageStatus``, safe to read from any thread
(``/health`` reads it without waiting). ``last_error`` keeps the latest failure, also once
the database is writable again, with when it happened. Errors are SQLite's own short
messages ("attempt to write a readonly database"): never the path.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from aggregate.adapters.sqlite_snapshot_file import DATABASE_NAME, TABLE
from aggregate.application.activity import rfc3339_utc

if TYPE_CHECKING:
    import os
    from collections.abc import Callable

    from trio import TaskStatus

log = logging.getLogger(__name__)

PROBE_TABLE = "storage_probe"
MAX_ERROR_CHARS = 200


@dataclass(frozen=True, slots=True)
class StorageStatus:
    """The snapshot database as the last check found it (``GET /health`` ``storage``).

    Before the first check both flags are None.
    """

    reachable: bool | None = None
    writable: bool | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    checked_at: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "reachable": self.reachable,
            "writable": self.writable,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "checked_at": self.checked_at,
        }


class StorageCheckError(Exception):
    """A check failed: ``reachable`` says whether the database could be opened and read."""

    def __init__(self, reason: str, *, reachable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reachable = reachable


def _sqlite_reason(what: str, exc: sqlite3.Error) -> str:
    text = str(exc) or type(exc).__name__
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 3] + "..."
    return f"{what}: {text}"


def check_database(path: os.PathLike[str] | str, busy_timeout: float, stamp: str) -> None:
    """Open ``path`` read-write without creating it, read the snapshot table, write the
    probe row; blocking (run it in a worker thread).

    Raises:
        StorageCheckError: a step failed; the reason is SQLite's message, without the path.
    """
    uri = Path(path).absolute().as_uri() + "?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None)
    except sqlite3.Error as exc:
        raise StorageCheckError(_sqlite_reason("cannot open", exc), reachable=False) from None
    try:
        try:
            conn.execute(f"SELECT 1 FROM {TABLE} LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StorageCheckError(_sqlite_reason("cannot read", exc), reachable=False) from None
        try:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} "
                "(id INTEGER PRIMARY KEY, checked_at TEXT NOT NULL)"
            )
            conn.execute(
                f"INSERT INTO {PROBE_TABLE} (id, checked_at) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                (stamp,),
            )
        except sqlite3.Error as exc:
            raise StorageCheckError(_sqlite_reason("cannot write", exc), reachable=True) from None
    finally:
        conn.close()


class StorageProbe:
    """Checks the snapshot database now and then (see the module docstring).

    Args:
        storage_path: the directory of ``snapshots.db``.
        interval_s: seconds between checks.
        timeout_s: longest a check may take (also SQLite's busy wait within it).
        clock: wall-clock Unix seconds, for the timestamps.
        check: the blocking check (``check_database``; tests inject failures here).
    """

    def __init__(
        self,
        storage_path: os.PathLike[str] | str,
        *,
        interval_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
        check: Callable[[os.PathLike[str] | str, float, str], None] = check_database,
    ) -> None:
        self.path = Path(storage_path) / DATABASE_NAME
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._check = check
        self.status = StorageStatus()
        """The latest result; replaced whole, so any thread may read it."""

    async def check(self) -> StorageStatus:
        """Check once and publish the result.

        Cancellation: nothing is published; the check may finish in its worker thread.
        """
        stamp = rfc3339_utc(self._clock())
        failure: StorageCheckError | None = None
        with trio.move_on_after(self.timeout_s) as scope:
            try:
                await trio.to_thread.run_sync(
                    self._check, self.path, self.timeout_s, stamp, abandon_on_cancel=True
                )
            except StorageCheckError as exc:
                failure = exc
        if scope.cancelled_caught:
            failure = StorageCheckError(
                f"the check did not finish within {self.timeout_s:g} s", reachable=False
            )
        previous = self.status
        if failure is None:
            if previous.writable is False:
                log.info("snapshot database writable again")
            self.status = replace(previous, reachable=True, writable=True, checked_at=stamp)
        else:
            if previous.writable is not False:
                log.warning("snapshot database check failed: %s", failure.reason)
            self.status = StorageStatus(
                reachable=failure.reachable,
                writable=False,
                last_error=failure.reason,
                last_error_at=stamp,
                checked_at=stamp,
            )
        return self.status

    async def serve(
        self, *, task_status: TaskStatus[StorageProbe] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Check at once, report through ``task_status``, then check every ``interval_s``
        until cancelled (the normal way to stop)."""
        await self.check()
        task_status.started(self)
        while True:
            await trio.sleep(self.interval_s)
            await self.check()
