"""The snapshot store: the latest snapshot per aggregate in SQLite (DESIGN §5).

One row per ``(tenant_id, aggregate_type, aggregate_id)`` in ``<storage_path>/snapshots.db``
(WAL mode). The version check is part of the one UPSERT statement, so racing writers never
regress a row. Snapshots are only an optimisation: an undecodable row reads as "none".

Every SQLite call runs in a worker thread (``anyio.to_thread.run_sync``) under a
``CapacityLimiter``. The service uses one store from two event loops (loads on the asyncio
island, writes from the Trio snapshotter) and an anyio limiter belongs to one loop, so each
loop gets its own (a ``RunVar`` per store). Pooled connections are each borrowed by one
worker thread for one call, never shared by two threads at once (``check_same_thread`` is
off only because the borrowing thread changes). Deleted rows are overwritten on disk
(``secure_delete``) and ``delete_tenant`` truncates the WAL, so erased data does not linger.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from aggregate.adapters.sqlite_snapshot_file import (
    COUNT_CHUNK,
    DATABASE_NAME,
    DELETE,
    SELECT,
    TABLE,
    UPSERT,
    ConnectionPool,
    SnapshotStoreStats,
    count_by_tenant_sql,
    decode_row,
    dumps,
    initialise,
    key_params,
)
from aggregate.domain.errors import (
    BackendUnavailableError,
    ConfigError,
    CorruptDataError,
    InvalidArgumentError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from sqlite_utils import Database

    from aggregate.domain.aggregate import Snapshot
    from aggregate.domain.ids import AggregateKey

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SqliteSnapshotStore:
    """``SnapshotStore`` on a SQLite file (see the module docstring).

    Make one with ``await SqliteSnapshotStore.open(storage_path)`` (or
    ``open_sqlite_snapshot_store``) and ``await store.aclose()`` it when done.
    """

    def __init__(
        self,
        storage_path: str | os.PathLike[str],
        *,
        max_threads: int = 4,
        busy_timeout: float = 5.0,
    ) -> None:
        """Configure a store; no I/O happens until ``open``.

        Raises:
            ConfigError: ``max_threads`` is below 1 or ``busy_timeout`` is negative.
        """
        if max_threads < 1:
            raise ConfigError(f"snapshot store max_threads must be at least 1, not {max_threads}")
        if busy_timeout < 0:
            raise ConfigError(f"snapshot store busy_timeout must be >= 0, not {busy_timeout}")
        self.path = Path(storage_path) / DATABASE_NAME
        self.max_threads = max_threads
        self.busy_timeout = busy_timeout
        self._pool: ConnectionPool | None = None
        self._closed = False
        self._limiter: RunVar[anyio.CapacityLimiter] = RunVar(f"snapshot-limiter-{id(self)}")

    @classmethod
    async def open(
        cls,
        storage_path: str | os.PathLike[str],
        *,
        max_threads: int = 4,
        busy_timeout: float = 5.0,
    ) -> SqliteSnapshotStore:
        """Open (creating if missing) ``<storage_path>/snapshots.db`` in WAL mode.

        Raises:
            ConfigError: the path cannot be created or opened, is not a SQLite database, or
                holds an incompatible table; the message names the path.

        Cancellation: the store is not opened (a worker thread may still finish creating
        the file, which is harmless).
        """
        store = cls(storage_path, max_threads=max_threads, busy_timeout=busy_timeout)
        store._pool = await anyio.to_thread.run_sync(
            initialise, store.path, busy_timeout, abandon_on_cancel=True
        )
        return store

    def _current_limiter(self) -> anyio.CapacityLimiter:
        try:
            return self._limiter.get()
        except LookupError:
            limiter = anyio.CapacityLimiter(self.max_threads)
            self._limiter.set(limiter)
            return limiter

    async def _run(self, fn: Callable[[Database], T], what: str) -> T:
        """Run ``fn`` with a pooled connection in a worker thread.

        Raises:
            BackendUnavailableError: the store is not open, or SQLite failed to ``what``.

        Cancellation: the caller stops waiting; the statement still runs to its end in the
        worker thread, which then hands the connection back (or closes it if the store was
        closed meanwhile).
        """
        pool = self._pool
        if pool is None:
            state = "closed" if self._closed else "not open (use SqliteSnapshotStore.open)"
            raise BackendUnavailableError(f"the snapshot store at {self.path} is {state}")

        def call() -> T:
            db = pool.borrow()
            try:
                return fn(db)
            except sqlite3.Error as exc:
                raise BackendUnavailableError(f"cannot {what} in {self.path}: {exc}") from None
            finally:
                pool.give_back(db)

        return await anyio.to_thread.run_sync(
            call, abandon_on_cancel=True, limiter=self._current_limiter()
        )

    async def load(self, key: AggregateKey) -> Snapshot | None:
        """The stored snapshot of ``key``, or None.

        Never raises for bad data or a broken database: a row that cannot be decoded, or
        a read that fails, is logged as a warning and reported as None (the events are the
        truth; the caller then rebuilds from them).

        Cancellation: nothing is returned; the read may finish in its worker thread.
        """
        try:
            row = await self._run(lambda db: db.execute(SELECT, key_params(key)).fetchone(), "read")
        except BackendUnavailableError as exc:
            logger.warning("snapshot of %s not read from %s: %s", key, self.path, exc)
            return None
        if row is None:
            return None
        try:
            snapshot = decode_row(tuple(row))
        except CorruptDataError as exc:
            logger.warning("snapshot of %s in %s ignored: %s", key, self.path, exc.message)
            return None
        if snapshot.key != key:
            logger.error("snapshot row read under %s names %s: ignored", key, snapshot.key)
            return None
        return snapshot

    async def save(self, snapshot: Snapshot) -> bool:
        """Store ``snapshot`` unless a snapshot with an equal or newer version is stored.

        Returns whether it was written. The version check and the write are one
        statement, so concurrent writers never regress a row.

        Raises:
            InvalidArgumentError: the state or history is not JSON-serialisable.
            BackendUnavailableError: the database cannot be written (disk full, locked
                past the busy timeout, closed store).

        Cancellation: the write may or may not happen (it finishes in its worker thread).
        """
        try:
            params = (
                *key_params(snapshot.key),
                snapshot.version,
                snapshot.stream_seq,
                dumps(snapshot.state),
                snapshot.history.to_json_text(),
                snapshot.created_at,
            )
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(
                f"snapshot of {snapshot.key} cannot be stored as JSON: {exc}"
            ) from None

        def write(db: Database) -> bool:
            return db.execute(UPSERT, params).rowcount > 0

        return await self._run(write, f"write the snapshot of {snapshot.key}")

    async def delete(self, key: AggregateKey) -> bool:
        """Delete the snapshot of ``key``; returns whether there was one.

        Raises:
            BackendUnavailableError: the database cannot be written.

        Cancellation: the delete may or may not happen.
        """

        def delete(db: Database) -> bool:
            return db.execute(DELETE, key_params(key)).rowcount > 0

        return await self._run(delete, f"delete the snapshot of {key}")

    async def delete_tenant(self, tenant_id: str) -> int:
        """Erase every snapshot of ``tenant_id``; returns how many rows were deleted.

        Deleted rows are overwritten in the database file (``secure_delete``) and the WAL
        is checkpointed and truncated, so the erased bytes do not stay on disk.

        Raises:
            BackendUnavailableError: the database cannot be written.

        Cancellation: the erasure may or may not happen; call again to be sure.
        """

        def erase(db: Database) -> int:
            count = db.execute(f"DELETE FROM {TABLE} WHERE tenant_id = ?", (tenant_id,)).rowcount
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return int(count)

        return await self._run(erase, f"erase the snapshots of tenant {tenant_id!r}")

    async def delete_types(self, aggregate_types: list[str] | None) -> int:
        """Delete every snapshot of the given aggregate types (None: of every type), so
        their states are replayed from the events; returns how many rows were deleted.

        Raises:
            BackendUnavailableError: the database cannot be written.

        Cancellation: the delete may or may not happen.
        """

        def delete(db: Database) -> int:
            if aggregate_types is None:
                return int(db.execute(f"DELETE FROM {TABLE}").rowcount)
            return sum(
                int(db.execute(f"DELETE FROM {TABLE} WHERE aggregate_type = ?", (name,)).rowcount)
                for name in aggregate_types
            )

        return await self._run(delete, "delete the snapshots of reloaded types")

    async def count(self, tenant_id: str | None = None) -> int:
        """How many snapshots are stored (of one tenant, when given).

        Raises:
            BackendUnavailableError: the database cannot be read.
        """

        def count(db: Database) -> int:
            table = db.table(TABLE)
            if tenant_id is None:
                return int(table.count)
            return int(table.count_where("tenant_id = ?", [tenant_id]))

        return await self._run(count, "count snapshots")

    async def count_by_tenant(self, tenant_ids: Sequence[str]) -> dict[str, int]:
        """How many snapshots each of ``tenant_ids`` has; tenants with none are left out.

        The cost grows with the snapshots of the tenants asked for, not with the table:
        each tenant is an index search (``count_by_tenant_sql``).

        Raises:
            BackendUnavailableError: the database cannot be read.
        """
        wanted = list(dict.fromkeys(tenant_ids))

        def count(db: Database) -> dict[str, int]:
            counts: dict[str, int] = {}
            for start in range(0, len(wanted), COUNT_CHUNK):
                chunk = wanted[start : start + COUNT_CHUNK]
                for tenant, n in db.execute(count_by_tenant_sql(len(chunk)), chunk).fetchall():
                    counts[str(tenant)] = int(n)
            return counts

        if not wanted:
            return {}
        return await self._run(count, "count snapshots by tenant")

    async def stats(self) -> SnapshotStoreStats:
        """Rows, tenants and file size, for the admin API.

        Raises:
            BackendUnavailableError: the database cannot be read.
        """

        def stats(db: Database) -> SnapshotStoreStats:
            rows, tenants = db.execute(
                f"SELECT count(*), count(DISTINCT tenant_id) FROM {TABLE}"
            ).fetchone()
            size = 0
            for suffix in ("", "-wal"):
                with suppress(OSError):
                    size += os.path.getsize(f"{self.path}{suffix}")
            return SnapshotStoreStats(str(self.path), int(rows), int(tenants), size)

        return await self._run(stats, "read snapshot statistics")

    async def aclose(self) -> None:
        """Close the idle connections; connections still in use by abandoned worker
        threads are closed when those threads finish. Idempotent.

        Cancellation: shielded; closing (which checkpoints the WAL) always completes.
        """
        pool, self._pool = self._pool, None
        self._closed = True
        if pool is None:
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(pool.close)


@asynccontextmanager
async def open_sqlite_snapshot_store(
    storage_path: str | os.PathLike[str], *, max_threads: int = 4, busy_timeout: float = 5.0
) -> AsyncIterator[SqliteSnapshotStore]:
    """``SqliteSnapshotStore.open`` as an async context manager that closes the store.

    Raises:
        ConfigError: see ``SqliteSnapshotStore.open``.
    """
    store = await SqliteSnapshotStore.open(
        storage_path, max_threads=max_threads, busy_timeout=busy_timeout
    )
    try:
        yield store
    finally:
        await store.aclose()
