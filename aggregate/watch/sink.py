"""``TeeSink``: one ``ChangeSink`` for the handler that reports every append to several
(the change feed of the index, the watch hub), each with its own tickets."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aggregate.application.ports import ChangeSink
    from aggregate.domain.changes import CommittedChange


class TeeSink:
    """``ChangeSink`` forwarding each call to every sink in ``sinks``, in order."""

    def __init__(self, *sinks: ChangeSink) -> None:
        self.sinks = sinks
        self._tickets = itertools.count(1)
        self._open: dict[int, tuple[int, ...]] = {}

    def append_started(self, tenant_id: str) -> int:
        ticket = next(self._tickets)
        self._open[ticket] = tuple(s.append_started(tenant_id) for s in self.sinks)
        return ticket

    def offer(self, change: CommittedChange) -> None:
        for sink in self.sinks:
            sink.offer(change)

    def append_ended(self, ticket: int, *, uncertain: bool) -> None:
        tickets = self._open.pop(ticket, None)
        if tickets is None:
            return
        for sink, own in zip(self.sinks, tickets, strict=True):
            sink.append_ended(own, uncertain=uncertain)
