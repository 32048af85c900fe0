"""The change feed: the handler's committed messages, fanned out to the read side, and the
per-tenant watermark that says how far the offered changes are complete (DESIGN §10).

Positions are stream sequences, one sequence over all tenants. Offers of different
aggregates can arrive out of position order: two appends in flight at once are numbered by
the server in the order it receives them, and their answers may come back the other way.
So an offered position alone does not say that everything before it was offered.

**The watermark rule.** ``known`` is the highest position this node knows to be stored (the
largest offered position, or a stream end a replay has read). Each append in flight is
recorded with the value of ``known`` when it was started, its *floor*: the server had
already numbered every message up to ``known``, so this append's message, if it is stored
at all, lands above its floor. An append that ended *uncertain* (it may have stored a
message that was never offered) keeps its floor until a replay of the tenant's messages
from the stream, started after that append ended, has been applied. The watermark of a
tenant is then

    watermark(tenant) = min(floors of the tenant's open and uncertain appends), else known

and every message of the tenant *written by this node* at a position <= watermark has been
offered. It is the index's (and the watch's) notion of "complete up to". Messages written by
*other* nodes (a tenant moving between shards writes on its old owner until the move ends)
are not offered here: a node replays a tenant's messages from the stream when the tenant
arrives, and only then serves it as current. A tenant this node does not host has no
meaningful watermark.

Runs on the asyncio island, the handler's thread: every method is plain synchronous code,
never blocks, never raises into the handler (a failing consumer is logged and skipped).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aggregate.domain.changes import CommittedChange

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aggregate.application.ports import ChangeSink
    from aggregate.domain.aggregate import AggregateInstance
    from aggregate.domain.envelopes import CommandRecord

log = logging.getLogger(__name__)


class ChangeConsumer(Protocol):
    """A reader of the feed (the indexer, the watch hub)."""

    def deliver(self, change: CommittedChange) -> None:
        """Take one committed change. Never blocks (buffer it); must not raise."""
        ...


@dataclass
class _Tenant:
    open: dict[int, int] = field(default_factory=dict)  # ticket -> floor
    uncertain: dict[int, int] = field(default_factory=dict)  # number of its ending -> floor

    def floor(self) -> int | None:
        floors = [*self.open.values(), *self.uncertain.values()]
        return min(floors) if floors else None


@dataclass(frozen=True, slots=True)
class Frontier:
    """The watermarks at one moment: ``known`` for every tenant but those in ``held``."""

    known: int
    held: dict[str, int]

    def watermark(self, tenant_id: str) -> int:
        return self.held.get(tenant_id, self.known)


class ChangeFeed:
    """``ChangeSink`` of the handler: tracks the watermark rule and fans offers out."""

    def __init__(self, consumers: list[ChangeConsumer] | None = None, *, known: int = 0) -> None:
        self.consumers: list[ChangeConsumer] = list(consumers or ())
        self.known = known
        self._tickets = itertools.count(1)
        self._tenants: dict[str, _Tenant] = {}
        self._ticket_tenant: dict[int, str] = {}

    # --- ChangeSink ---

    def append_started(self, tenant_id: str) -> int:
        ticket = next(self._tickets)
        self._tenants.setdefault(tenant_id, _Tenant()).open[ticket] = self.known
        self._ticket_tenant[ticket] = tenant_id
        return ticket

    def offer(self, change: CommittedChange) -> None:
        self.known = max(self.known, change.position)
        for consumer in self.consumers:
            try:
                consumer.deliver(change)
            except Exception:  # a reader's bug must not fail a stored command
                log.exception("change consumer %r failed on position %d", consumer, change.position)

    def append_ended(self, ticket: int, *, uncertain: bool) -> None:
        tenant_id = self._ticket_tenant.pop(ticket, None)
        if tenant_id is None:
            return
        state = self._tenants[tenant_id]
        floor = state.open.pop(ticket)
        if uncertain:  # numbered when it ended: a replay must start reading after that
            state.uncertain[next(self._tickets)] = floor
        elif not state.uncertain and not state.open:
            del self._tenants[tenant_id]

    # --- readers ---

    def watermark(self, tenant_id: str) -> int:
        """See the module's rule."""
        state = self._tenants.get(tenant_id)
        floor = state.floor() if state is not None else None
        return self.known if floor is None else floor

    def frontier(self) -> Frontier:
        """Every tenant's watermark at this moment, in one value."""
        held = {}
        for tenant_id, state in self._tenants.items():
            floor = state.floor()
            if floor is not None:
                held[tenant_id] = floor
        return Frontier(self.known, held)

    def uncertain_tenants(self) -> list[str]:
        """Tenants with an uncertain append that no replay has resolved yet."""
        return [t for t, state in self._tenants.items() if state.uncertain]

    def replay_mark(self) -> int:
        """Call before a replay starts reading the stream; pass the value to ``replayed``."""
        return next(self._tickets)

    def replayed(self, tenant_id: str, mark: int, stream_end: int) -> None:
        """A replay of ``tenant_id``'s messages from the stream, started after ``mark`` was
        taken, has been applied up to ``stream_end`` (the stream's last sequence when it
        started reading): the appends that ended uncertain before ``mark`` are resolved."""
        self.known = max(self.known, stream_end)
        state = self._tenants.get(tenant_id)
        if state is None:
            return
        for ended in [e for e in state.uncertain if e < mark]:
            del state.uncertain[ended]
        if not state.uncertain and not state.open:
            del self._tenants[tenant_id]

    def observed(self, stream_end: int) -> None:
        """The stream holds ``stream_end`` messages (read by a replay of every tenant)."""
        self.known = max(self.known, stream_end)


class Append:
    """One append in flight, as the change sink sees it (``open_append``)."""

    __slots__ = ("settled", "sink", "ticket")

    def __init__(self, sink: ChangeSink | None, ticket: int) -> None:
        self.sink = sink
        self.ticket = ticket
        self.settled = False
        """True once the append is known to have stored nothing new, or was committed."""

    def committed(self, instance: AggregateInstance, previous: int, record: CommandRecord) -> None:
        """``record`` is stored at ``instance.last_seq`` (the aggregate's message before it
        at ``previous``) and ``instance`` holds the state after it: offer the change."""
        if self.sink is not None:
            self.sink.offer(
                CommittedChange(
                    key=instance.key,
                    position=instance.last_seq,
                    previous_position=previous,
                    version=instance.version,
                    command_id=record.command_id,
                    events=record.events,
                    state=instance.state,
                )
            )
        self.settled = True


@contextlib.contextmanager
def open_append(sink: ChangeSink | None, tenant_id: str) -> Iterator[Append]:
    """Bracket one append for ``sink`` (``ChangeSink``): it ends uncertain unless the body
    settles it (``Append.committed`` or ``settled = True``), whatever the body raises."""
    append = Append(sink, sink.append_started(tenant_id) if sink is not None else 0)
    try:
        yield append
    finally:
        if sink is not None:
            sink.append_ended(append.ticket, uncertain=not append.settled)
