"""The handler's bounded aggregate cache and per-aggregate locks.

Commands for one aggregate are serialized inside a node by one lock per key (DESIGN §1);
locks exist only while someone holds or waits for them, so their number is bounded by the
commands in flight, not by the aggregates ever seen.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aggregate.domain.aggregate import AggregateInstance
    from aggregate.domain.ids import AggregateKey


class AggregateCache:
    """Least-recently-used aggregates, at most ``capacity`` of them.

    It also counts the cached aggregates of each tenant as they come and go
    (``tenant_count``), so the admin API never walks the cache.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("cache capacity must not be negative")
        self.capacity = capacity
        self._items: OrderedDict[AggregateKey, AggregateInstance] = OrderedDict()
        self._per_tenant: dict[str, int] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: AggregateKey) -> AggregateInstance | None:
        instance = self._items.get(key)
        if instance is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return instance

    def tenant_count(self, tenant_id: str) -> int:
        """How many aggregates of ``tenant_id`` are cached."""
        return self._per_tenant.get(tenant_id, 0)

    def _uncount(self, tenant_id: str) -> None:
        left = self._per_tenant[tenant_id] - 1
        if left:
            self._per_tenant[tenant_id] = left
        else:
            del self._per_tenant[tenant_id]

    def put(self, instance: AggregateInstance) -> None:
        if self.capacity == 0:
            return
        key = instance.key
        if key not in self._items:
            self._per_tenant[key.tenant_id] = self._per_tenant.get(key.tenant_id, 0) + 1
        self._items[key] = instance
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            evicted, _ = self._items.popitem(last=False)
            self._uncount(evicted.tenant_id)

    def discard(self, key: AggregateKey) -> None:
        if self._items.pop(key, None) is not None:
            self._uncount(key.tenant_id)

    def discard_tenant(self, tenant_id: str) -> int:
        """Forget every aggregate of a tenant (it moved to another shard). Returns how many."""
        keys = [key for key in self._items if key.tenant_id == tenant_id]
        for key in keys:
            del self._items[key]
        self._per_tenant.pop(tenant_id, None)
        return len(keys)

    def discard_types(self, aggregate_types: list[str] | None) -> int:
        """Forget every aggregate of the given types (None: of every type), so they are
        loaded again with the programs now configured. Returns how many."""
        keys = [
            key
            for key in self._items
            if aggregate_types is None or key.aggregate_type in aggregate_types
        ]
        for key in keys:
            del self._items[key]
        return len(keys)

    def clear(self) -> None:
        self._items.clear()
        self._per_tenant.clear()


class KeyedLocks:
    """One ``anyio.Lock`` per aggregate key, taken on demand and dropped when unused.

    Dropped locks (free, nobody waiting) go to a small free list for the next key: making
    an ``anyio.Lock`` looks up the running async library, a measurable cost per command.
    """

    FREE_LIST = 256

    def __init__(self) -> None:
        self._locks: dict[AggregateKey, tuple[anyio.Lock, int]] = {}
        self._free: list[anyio.Lock] = []
        self.waiting = 0
        """Callers waiting for a lock another holds (the command queue's depth)."""

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: AggregateKey) -> AsyncIterator[None]:
        """Hold the lock of ``key``. Cancellation while waiting leaves no trace."""
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            # fast_acquire: an uncontended acquire does not yield to the event loop; the
            # handler awaits I/O right after, so fairness is kept where it matters.
            lock = self._free.pop() if self._free else anyio.Lock(fast_acquire=True)
        self._locks[key] = (lock, users + 1)
        try:
            if users:
                self.waiting += 1
                try:
                    await lock.acquire()
                finally:
                    self.waiting -= 1
            else:
                await lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            lock_, users = self._locks[key]
            if users == 1:
                del self._locks[key]
                if len(self._free) < self.FREE_LIST:  # released above, nobody waiting
                    self._free.append(lock_)
            else:
                self._locks[key] = (lock_, users - 1)
