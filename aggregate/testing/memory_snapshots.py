"""An in-memory snapshot store that is also a snapshot sink (tests and the model)."""

from __future__ import annotations

import copy
import threading
from typing import TYPE_CHECKING

import anyio.lowlevel

if TYPE_CHECKING:
    from aggregate.domain.aggregate import Snapshot
    from aggregate.domain.ids import AggregateKey


class InMemorySnapshotStore:
    """Latest snapshot per key, monotonic by version; ``offer`` writes at once."""

    def __init__(self) -> None:
        self._rows: dict[AggregateKey, Snapshot] = {}
        self._lock = threading.Lock()
        self.offered = 0

    def __len__(self) -> int:
        return len(self._rows)

    def _save(self, snapshot: Snapshot) -> bool:
        with self._lock:
            current = self._rows.get(snapshot.key)
            if current is not None and current.version >= snapshot.version:
                return False
            self._rows[snapshot.key] = copy.deepcopy(snapshot)
            return True

    async def load(self, key: AggregateKey) -> Snapshot | None:
        await anyio.lowlevel.checkpoint()
        with self._lock:
            row = self._rows.get(key)
        return copy.deepcopy(row)

    async def save(self, snapshot: Snapshot) -> bool:
        await anyio.lowlevel.checkpoint()
        return self._save(snapshot)

    def offer(self, snapshot: Snapshot) -> None:
        self.offered += 1
        self._save(snapshot)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
