"""Per-tenant command activity on this node, for the admin views.

The handler wraps every command the tenant gate admitted in ``tracker.track(tenant_id)``;
when the block ends (whatever the outcome: events appended, rejected, conflict, failure)
the tenant's ``commands_total`` grows by one and its ``last_activity`` becomes now. That
is a dict lookup and two stores per command, so the admin API never has to read the event
stream to say how busy a tenant is.

The tracker remembers at most ``max_tenants`` tenants: past that, the tenant idle the
longest is forgotten (it shows ``commands_total`` 0 and ``last_activity`` null again), so
clients that send commands for many tenant ids cannot grow it without bound.

It belongs to the event loop of the handler (the asyncio island in the service): not
thread-safe, like the tenant gate it sits next to.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

DEFAULT_MAX_TENANTS = 100_000
"""Tenants remembered by default; beyond that the longest idle is forgotten."""


def rfc3339_utc(seconds: float) -> str:
    """Unix time as RFC 3339 UTC with milliseconds (``2026-01-02T03:04:05.678Z``)."""
    millis = int(seconds * 1000)
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000))
    return f"{whole}.{millis % 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class TenantActivity:
    """A tenant's commands on this node since it started: how many, and when the last one
    ended (RFC 3339 UTC; None if none)."""

    commands_total: int
    last_activity: str | None


NO_ACTIVITY = TenantActivity(0, None)


class _Entry:
    """One tenant's counters; also the context manager ``track`` returns."""

    __slots__ = ("commands", "last", "shown", "tenant_id", "tracker")

    def __init__(self, tracker: ActivityTracker, tenant_id: str) -> None:
        self.tracker = tracker
        self.tenant_id = tenant_id
        self.commands = 0
        self.last: float | None = None
        self.shown: tuple[float, str] | None = None
        """``last`` and its RFC 3339 text, rendered when first read (not per command)."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.commands += 1
        self.last = self.tracker.clock()
        self.tracker.touched(self)


class ActivityTracker:
    """Counts each tenant's commands and keeps the time of its last one (module docstring).

    Args:
        max_tenants: most tenants remembered (at least 1).
        clock: wall-clock Unix seconds, for ``last_activity``.
    """

    def __init__(
        self, *, max_tenants: int = DEFAULT_MAX_TENANTS, clock: Callable[[], float] = time.time
    ) -> None:
        if max_tenants < 1:
            raise ValueError(f"max_tenants must be at least 1, not {max_tenants}")
        self.max_tenants = max_tenants
        self.clock = clock
        # Least recently active first.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def track(self, tenant_id: str) -> _Entry:
        """Count one command of ``tenant_id`` when the returned context ends."""
        entry = self._entries.get(tenant_id)
        if entry is None:
            entry = self._entries[tenant_id] = _Entry(self, tenant_id)
            self._evict()
        return entry

    def touched(self, entry: _Entry) -> None:
        """A command of ``entry`` ended: it becomes the most recently active tenant."""
        entries = self._entries
        current = entries.get(entry.tenant_id)
        if current is None:
            entries[entry.tenant_id] = entry
            self._evict()
        elif current is not entry:
            # Forgotten while the command ran, and tracked again since: count it there.
            current.commands += 1
            current.last = entry.last
        entries.move_to_end(entry.tenant_id)

    def _evict(self) -> None:
        while len(self._entries) > self.max_tenants:
            self._entries.popitem(last=False)

    def of(self, tenant_id: str) -> TenantActivity:
        """The tenant's counters (zero and None when it sent no command here)."""
        entry = self._entries.get(tenant_id)
        if entry is None or entry.last is None:
            return NO_ACTIVITY
        shown = entry.shown
        if shown is None or shown[0] != entry.last:
            shown = entry.shown = (entry.last, rfc3339_utc(entry.last))
        return TenantActivity(entry.commands, shown[1])


class NoActivityTracker:
    """Tracks nothing (a handler built without a tracker)."""

    def track(self, tenant_id: str) -> _NoEntry:
        return _NO_ENTRY


class _NoEntry:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


_NO_ENTRY = _NoEntry()
