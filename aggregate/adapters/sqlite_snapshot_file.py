"""The snapshot database file: its table and statements, row decoding, and the pool of
connections the snapshot store borrows (``aggregate.adapters.sqlite_snapshots``).

``initialise`` creates ``snapshots.db`` (WAL mode) and its table, or checks an existing one;
each pooled connection is borrowed by one worker thread for one call.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database

from aggregate.domain.aggregate import Snapshot
from aggregate.domain.errors import BackendUnavailableError, ConfigError, CorruptDataError
from aggregate.domain.history import FrozenHistory
from aggregate.domain.ids import AggregateKey, canonical_uuid

if TYPE_CHECKING:
    from pathlib import Path

DATABASE_NAME = "snapshots.db"
TABLE = "snapshots"
SCHEMA_VERSION = 1
COLUMNS = dict.fromkeys(("tenant_id", "aggregate_type", "aggregate_id"), str) | {
    "version": int,
    "stream_seq": int,
    "state": str,
    "history": str,
    "created_at": str,
}
PRIMARY_KEY = ("tenant_id", "aggregate_type", "aggregate_id")

UPSERT = f"""
INSERT INTO {TABLE} (tenant_id, aggregate_type, aggregate_id, version, stream_seq, state,
                     history, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO UPDATE SET
    version = excluded.version,
    stream_seq = excluded.stream_seq,
    state = excluded.state,
    history = excluded.history,
    created_at = excluded.created_at
WHERE excluded.version > {TABLE}.version OR typeof({TABLE}.version) != 'integer'
"""
SELECT = f"""
SELECT tenant_id, aggregate_type, aggregate_id, version, stream_seq, state, history, created_at
FROM {TABLE} WHERE tenant_id = ? AND aggregate_type = ? AND aggregate_id = ?
"""
DELETE = f"DELETE FROM {TABLE} WHERE tenant_id = ? AND aggregate_type = ? AND aggregate_id = ?"
COUNT_CHUNK = 500
"""Tenant ids per counting statement (SQLite allows 32766 parameters; keep it short)."""


def count_by_tenant_sql(tenants: int) -> str:
    """The statement counting the snapshots of ``tenants`` tenant ids (its parameters):
    an index search per tenant on the primary key, which starts with ``tenant_id``."""
    marks = ",".join("?" * tenants)
    return (
        f"SELECT tenant_id, count(*) FROM {TABLE} WHERE tenant_id IN ({marks}) GROUP BY tenant_id"
    )


@dataclass(frozen=True, slots=True)
class SnapshotStoreStats:
    """What the admin API shows about the snapshot database."""

    path: str
    rows: int
    tenants: int
    file_bytes: int


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def key_params(key: AggregateKey) -> tuple[str, str, str]:
    return (key.tenant_id, key.aggregate_type, str(key.aggregate_id))


def decode_row(row: tuple[Any, ...]) -> Snapshot:
    """Decode a ``snapshots`` row (columns in ``SELECT`` order) into a ``Snapshot``.

    The key is built from the row's own columns, so a caller can check it against the key
    it asked for.

    Raises:
        CorruptDataError: a column is missing, of the wrong type, or not valid JSON, or
            the command history is malformed.
    """
    try:
        tenant_id, aggregate_type, aggregate_id, version, stream_seq, state, history, created = row
        if not (isinstance(version, int) and isinstance(stream_seq, int)):
            raise TypeError("version and stream_seq must be integers")
        if version < 0 or stream_seq < 0:
            raise ValueError("negative version or stream sequence")
        if not all(isinstance(v, str) for v in (tenant_id, aggregate_type, state, history)):
            raise TypeError("text columns hold non-text values")
        parsed_id = canonical_uuid(aggregate_id)
        if parsed_id is None:
            raise ValueError("aggregate_id is not a UUID in the canonical form")
        key = AggregateKey(tenant_id, aggregate_type, parsed_id)
        state_value = json.loads(state)
        if not isinstance(state_value, dict):
            raise TypeError("state is not a JSON object")
        # Decode the history now: the handler would otherwise fail on it, and a snapshot
        # that breaks an answer is worse than no snapshot.
        frozen = FrozenHistory.from_json_text(history)
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise CorruptDataError(f"malformed snapshot row: {exc}") from None
    return Snapshot(
        key=key,
        version=version,
        stream_seq=stream_seq,
        state=state_value,
        history=frozen,
        created_at=str(created),
    )


class ConnectionPool:
    """Idle connections to one database file, handed to one worker thread at a time."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._idle: list[Database] = []
        self.closed = False

    def connect(self) -> Database:
        """A new connection with the per-connection settings.

        Raises:
            sqlite3.Error: the file cannot be opened.
        """
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,  # autocommit: every statement is its own transaction
            check_same_thread=False,  # see the module docstring: one thread at a time
        )
        try:
            db = Database(conn, execute_plugins=False)
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable enough for a cache
            db.execute("PRAGMA secure_delete=ON")
        except BaseException:
            conn.close()
            raise
        return db

    def borrow(self) -> Database:
        with self._lock:
            if self.closed:
                raise BackendUnavailableError(f"the snapshot store at {self.path} is closed")
            if self._idle:
                return self._idle.pop()
        return self.connect()

    def give_back(self, db: Database) -> None:
        with self._lock:
            if not self.closed:
                self._idle.append(db)
                return
        db.close()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()


def initialise(path: Path, busy_timeout: float) -> ConnectionPool:
    """Create the directory, database and table if missing; check an existing one.

    Raises:
        ConfigError: the path cannot be created or opened, or holds an incompatible table.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pool = ConnectionPool(path, busy_timeout)
        db = pool.connect()
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open the snapshot database {path}: {exc}") from None
    try:
        db.enable_wal()
        table = db.table(TABLE)
        if table.exists():
            missing = set(COLUMNS) - set(table.columns_dict)
            if missing or tuple(table.pks) != PRIMARY_KEY:
                raise ConfigError(
                    f"{path} holds a {TABLE!r} table this version cannot use (missing "
                    f"columns {sorted(missing)}, primary key {table.pks}); move the file "
                    "away: snapshots are rebuilt from the events"
                )
        else:
            table.create(COLUMNS, pk=PRIMARY_KEY, not_null=set(COLUMNS), if_not_exists=True)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except sqlite3.Error as exc:
        db.close()
        raise ConfigError(f"cannot use the snapshot database {path}: {exc}") from None
    except BaseException:
        db.close()
        raise
    pool.give_back(db)
    return pool
