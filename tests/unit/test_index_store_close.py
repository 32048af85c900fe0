"""Closing the index store while another thread runs a statement on it (real SQLite file).

The service closes the store when it stops; an index write may still be running in a
worker thread then (the island cancels what is left when it stops). Closing a SQLite
connection under a running statement is undefined: the service died with SIGSEGV. ``close``
now waits for the calls in progress and refuses the ones after it.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from aggregate.domain.ids import AggregateKey
from aggregate.query.index_store import IndexStore, ViewRow


def test_close_waits_for_a_running_write_and_refuses_later_calls(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    store = IndexStore(path)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the store's write waits on it
    key = AggregateKey("acme", "bank-account", uuid.uuid4())
    outcome: dict[str, Any] = {}

    def write() -> None:
        try:
            outcome["rows"] = store.write([ViewRow(key, 1, 1, "t1", {"n": 1})], {"acme": 1})
        except BaseException as exc:  # the assertion below shows it
            outcome["error"] = exc

    writer = threading.Thread(target=write)
    writer.start()
    with store._use:  # notified as a call enters: the write is inside its statement
        assert store._use.wait_for(lambda: store._users == 1, timeout=10)
    closer = threading.Thread(target=store.close)
    closer.start()
    with store._use:  # notified as close begins: it must now wait for the write
        assert store._use.wait_for(lambda: store._closed, timeout=10)
    assert closer.is_alive()
    blocker.execute("ROLLBACK")
    writer.join(10)
    closer.join(10)
    blocker.close()
    assert not writer.is_alive()
    assert not closer.is_alive()
    assert outcome == {"rows": 1}
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        store.count()
