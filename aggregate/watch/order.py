"""Position order for changes committed concurrently (the watch's ordering rule).

Appends of different aggregates run concurrently, so their acknowledgements can arrive out
of stream order: the append stored at 7 may be acknowledged after the one stored at 8. A
watcher must still see 7 before 8, and must never see 8 while 7 may still arrive.

The rule: every append takes a ticket before it is sent. When an append is acknowledged at
position ``p``, every append stored before ``p`` was sent before ``p``'s acknowledgement,
so it holds a ticket no higher than the highest ticket taken by then (``p``'s horizon).
``p`` is released once every ticket up to its horizon has ended (acknowledged or failed),
and releases go strictly in position order. Appends of other nodes do not matter: a tenant
is written by one node at a time, and a watch is scoped to one tenant.

An append whose outcome is unknown (timeout, disconnect, cancellation, a conflict: it may
answer a retried publish that landed) may have been stored at a position nobody will
report: the sequencer reports its tenant as uncertain, and the hub ends that tenant's
watches with a resume position (resuming reads the stream, which holds the truth).

Everything here runs on one thread (the island loop); nothing awaits.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from aggregate.watch.changes import Change


@dataclass(order=True, slots=True)
class _Pending:
    position: int
    horizon: int = field(compare=False)
    ticket: int = field(compare=False)
    change: Change = field(compare=False)


class Sequencer:
    """Tickets for appends in flight; releases acknowledged changes in position order.

    ``release`` is called with each change (and its ticket) once it can no longer be
    overtaken;
    ``uncertain`` with the tenant of an append whose outcome is unknown.
    """

    def __init__(
        self, release: Callable[[Change, int], None], uncertain: Callable[[str], None]
    ) -> None:
        self._release = release
        self._uncertain = uncertain
        self._next = 0
        self._open: dict[int, None] = {}
        self._pending: list[_Pending] = []

    @property
    def in_flight(self) -> int:
        return len(self._open)

    @property
    def next_ticket(self) -> int:
        """The ticket the next append will take."""
        return self._next

    @property
    def held_back(self) -> int:
        """Acknowledged changes waiting for earlier appends to end."""
        return len(self._pending)

    def begin(self) -> int:
        """A ticket for an append about to be sent."""
        ticket = self._next
        self._next += 1
        self._open[ticket] = None
        return ticket

    def acknowledged(self, ticket: int, change: Change) -> None:
        """The append of ``ticket`` is stored at ``change.position``."""
        heapq.heappush(self._pending, _Pending(change.position, self._next - 1, ticket, change))
        self._end(ticket)

    def not_stored(self, ticket: int) -> None:
        """The append of ``ticket`` certainly stored nothing (a conflict on its first send)."""
        self._end(ticket)

    def unknown(self, ticket: int, tenant_id: str) -> None:
        """The append of ``ticket`` may or may not have been stored."""
        self._end(ticket)
        self._uncertain(tenant_id)

    def _end(self, ticket: int) -> None:
        self._open.pop(ticket, None)
        oldest_open = next(iter(self._open), None)
        while self._pending and (oldest_open is None or oldest_open > self._pending[0].horizon):
            pending = heapq.heappop(self._pending)
            self._release(pending.change, pending.ticket)
