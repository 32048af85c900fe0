"""The index file: the latest view per aggregate and a position watermark per tenant, in
SQLite (DESIGN §10). Derived data, like the snapshots: deleting the file never changes an
answer; the indexer rebuilds it from the stream.

Tables: ``views`` (the read side's contract: one row per ``(tenant, type, id)``; an
UPSERT only replaces a row with one of a higher position, so live changes and replays can
arrive in any order), ``watermarks`` (per tenant: every message of the tenant at or below
``position`` is reflected), ``meta`` (``replayed_through``: the position up to which every
tenant's messages are reflected, the start of the next start-up replay). Expression
indexes come from the manifest's ``indexes:`` (``plan.index_statements``).

Synchronous and blocking: the indexer and the query service call it in worker threads.
One writer connection (callers serialise writes); readers get one connection per thread,
WAL mode lets them read while a batch is written.

**One statement per batch.** ``sqlite3`` lets go of the GIL around every statement step,
and a worker thread that wants it back while the asyncio island is busy waits for the
interpreter's switch interval (5 ms) each time. A batch written row by row would pay that
once per row. So a batch is one ``INSERT`` into a temporary view (``index_batch``) whose
``INSTEAD OF`` trigger does the upserts from JSON arrays (``json_each``): one statement,
one transaction, whatever the batch's size. The page-token key lives beside the file
(``<index>.key``, created 0600), so tokens survive restarts and a rebuild.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aggregate.domain.envelopes import dumps
from aggregate.domain.errors import ConfigError
from aggregate.query.plan import run_bounded

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from pathlib import Path

    from aggregate.domain.ids import AggregateKey
    from aggregate.query.plan import QueryPlan, Row

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS views (
  tenant_id      TEXT NOT NULL,
  aggregate_type TEXT NOT NULL,
  aggregate_id   TEXT NOT NULL,
  version        INTEGER NOT NULL,
  position       INTEGER NOT NULL,
  updated_at     TEXT NOT NULL,
  state          TEXT NOT NULL,
  PRIMARY KEY (tenant_id, aggregate_type, aggregate_id)
);
CREATE TABLE IF NOT EXISTS watermarks (
  tenant_id TEXT PRIMARY KEY,
  position  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
"""
_BATCH = """
CREATE TEMP VIEW IF NOT EXISTS index_batch (rows, watermarks, replayed_through)
  AS SELECT NULL, NULL, NULL;
CREATE TEMP TRIGGER IF NOT EXISTS index_batch_write INSTEAD OF INSERT ON index_batch BEGIN
  INSERT INTO views (tenant_id, aggregate_type, aggregate_id, version, position, updated_at, state)
  SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
         json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'),
         json_extract(value, '$[6]')
  FROM json_each(NEW.rows) WHERE true
  ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO UPDATE SET
    version = excluded.version, position = excluded.position,
    updated_at = excluded.updated_at, state = excluded.state
  WHERE excluded.position > views.position;
  INSERT INTO watermarks (tenant_id, position)
  SELECT key, value FROM json_each(NEW.watermarks) WHERE true
  ON CONFLICT (tenant_id) DO UPDATE SET position = max(position, excluded.position);
  INSERT INTO meta (key, value)
  SELECT 'replayed_through', NEW.replayed_through WHERE NEW.replayed_through IS NOT NULL
  ON CONFLICT (key) DO UPDATE SET value = excluded.value;
END;
"""
"""The batch writer (see the module). Every watermark and ``replayed_through`` counts as one
change, so the views a batch changed are the connection's changes minus those."""
_WRITE_BATCH = "INSERT INTO index_batch VALUES (?, ?, ?)"
_SELECT_ONE = """
SELECT version, position, updated_at, state FROM views
WHERE tenant_id = ? AND aggregate_type = ? AND aggregate_id = ?
"""
REPLAYED_THROUGH = "replayed_through"


@dataclass(frozen=True, slots=True)
class ViewRow:
    """One row to write: the view of ``key`` after the message at ``position``."""

    key: AggregateKey
    version: int
    position: int
    updated_at: str
    state: dict[str, Any]

    def params(self) -> tuple[object, ...]:
        key = self.key
        return (
            key.tenant_id,
            key.aggregate_type,
            str(key.aggregate_id),
            self.version,
            self.position,
            self.updated_at,
            dumps(self.state).decode(),
        )


@dataclass(frozen=True, slots=True)
class StoredView:
    """A row as read back for a replay: version, position and the parsed state."""

    version: int
    position: int
    updated_at: str
    state: dict[str, Any]


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=5000")
    return connection


class IndexStore:
    """The index file at ``path`` (created with its schema when missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _connect(path)
            self._writer.executescript(SCHEMA)
            self._writer.executescript(_BATCH)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the index file {path}: {exc}") from None
        self._readers = threading.local()
        self._all_readers: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._use = threading.Condition()
        self._users = 0
        """Calls on a connection right now (in worker threads): ``close`` waits for them."""
        self._closed = False

    @contextmanager
    def _using(self) -> Iterator[None]:
        """Hold the connections open for one call. Closing a connection while another
        thread runs a statement on it is undefined in SQLite: the service crashed with
        SIGSEGV when it stopped during an index write.

        Raises:
            sqlite3.ProgrammingError: the store is closed (what a closed connection says).
        """
        with self._use:
            if self._closed:
                raise sqlite3.ProgrammingError("the index store is closed")
            self._users += 1
            self._use.notify_all()
        try:
            yield
        finally:
            with self._use:
                self._users -= 1
                self._use.notify_all()

    # --- writes (one caller at a time) ---

    def write(
        self,
        rows: Iterable[ViewRow],
        watermarks: dict[str, int],
        *,
        replayed_through: int | None = None,
    ) -> int:
        """Write ``rows`` (each only over an older row) and raise the tenants' watermarks,
        in one transaction (one statement, see the module). Returns how many rows changed."""
        connection = self._writer
        encoded = json.dumps([row.params() for row in rows], ensure_ascii=False)
        through = str(replayed_through) if replayed_through is not None else None
        with self._using():
            before = connection.total_changes
            connection.execute(_WRITE_BATCH, (encoded, json.dumps(watermarks), through))
            other = len(watermarks) + (through is not None)
            return connection.total_changes - before - other

    def create_indexes(self, statements: Sequence[str]) -> None:
        with self._using():
            for statement in statements:
                self._writer.execute(statement)

    # --- reads ---

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection."""
        connection: sqlite3.Connection | None = getattr(self._readers, "connection", None)
        if connection is None:
            connection = _connect(self.path)
            self._readers.connection = connection
            with self._lock:
                self._all_readers.append(connection)
        return connection

    def run(self, plan: QueryPlan, *, max_steps: int) -> list[Row]:
        """The rows of one planned page."""
        with self._using():
            return run_bounded(self.reader(), plan, max_steps=max_steps)

    def views(self, keys: Iterable[AggregateKey]) -> dict[AggregateKey, StoredView]:
        """The stored views of ``keys`` (those that have one)."""
        found = {}
        connection = self._writer
        with self._using():
            for key in keys:
                got = connection.execute(
                    _SELECT_ONE, (key.tenant_id, key.aggregate_type, str(key.aggregate_id))
                ).fetchone()
                if got is not None:
                    found[key] = StoredView(got[0], got[1], got[2], json.loads(got[3]))
        return found

    def watermarks(self) -> dict[str, int]:
        with self._using():
            return dict(self._writer.execute("SELECT tenant_id, position FROM watermarks"))

    def replayed_through(self) -> int:
        with self._using():
            got = self._writer.execute(
                "SELECT value FROM meta WHERE key = ?", (REPLAYED_THROUGH,)
            ).fetchone()
        return int(got[0]) if got is not None else 0

    def count(self, tenant_id: str | None = None) -> int:
        with self._using():
            if tenant_id is None:
                return int(self._writer.execute("SELECT count(*) FROM views").fetchone()[0])
            sql = "SELECT count(*) FROM views WHERE tenant_id = ?"
            return int(self._writer.execute(sql, (tenant_id,)).fetchone()[0])

    def close(self) -> None:
        """Close the connections once no call is using them (a call that comes later is
        refused); waits for a statement another thread is running."""
        with self._use:
            self._closed = True
            self._use.notify_all()
            self._use.wait_for(lambda: self._users == 0)
        with self._lock:
            for connection in self._all_readers:
                connection.close()
            self._all_readers.clear()
        self._writer.close()


def token_key(index_path: Path) -> bytes:
    """The page-token key kept beside the index file (``<index>.key``): 32 random bytes,
    created 0600 on first use.

    Raises:
        ConfigError: the file cannot be read or created, or holds something else.
    """
    path = index_path.with_name(index_path.name + ".key")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the page-token key {path}: {exc}") from None
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as file:
        file.write(key)
    return key


def _read_key(path: Path) -> bytes:
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the page-token key {path}: {exc}") from None
    if len(key) != 32:
        raise ConfigError(f"the page-token key {path} is not 32 bytes; delete it")
    return key
