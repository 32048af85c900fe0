"""The watch hub: position order across concurrent appends, bounded queues, the buffer,
tenant isolation, and the ends of a watch (fed by hand and by the real handler)."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from aggregate.application.changes import ChangeFeed
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import Command, CommandRecord, events_from_decision
from aggregate.domain.errors import BackendUnavailableError, ResourceExhaustedError
from aggregate.domain.ids import AggregateKey, uuid7
from aggregate.programs.base import AggregateTypeSpec
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram, StaticTypes
from aggregate.watch.changes import Change, ChangeView, WatchSubset
from aggregate.watch.errors import (
    WatcherTooSlowError,
    WatchInterruptedError,
    WatchTenantMovedError,
)
from aggregate.watch.hub import Watcher, WatchHub, WatchLimits
from aggregate.watch.sink import TeeSink
from specs import bank

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.trio
TYPE = "bank-account"


def record(key: AggregateKey, version: int = 1, **payload: Any) -> CommandRecord:
    decided = [{"type": "Deposited", "amount": 1, **payload}]
    events = events_from_decision(decided, first_version=version)
    return CommandRecord(key, uuid7(), "c", "t", version, events)


def key(tenant: str = "acme") -> AggregateKey:
    return AggregateKey(tenant, TYPE, uuid7())


@contextlib.asynccontextmanager
async def running(hub: WatchHub) -> AsyncIterator[WatchHub]:
    async with anyio.create_task_group() as tg:
        await tg.start(hub.serve)
        yield hub
        tg.cancel_scope.cancel()


async def take(watcher: Watcher, n: int) -> list[Change]:
    with anyio.fail_after(5):
        return [await watcher.next() for _ in range(n)]


async def settle() -> None:
    """Let the hub's fan-out task run (it only waits on its own event)."""
    for _ in range(5):
        await anyio.lowlevel.checkpoint()


async def test_changes_acknowledged_out_of_order_are_released_in_position_order() -> None:
    async with running(WatchHub()) as hub:
        watcher, backlog = hub.watch(WatchSubset("acme"), 0)
        assert backlog == []
        first, second = hub.begin(), hub.begin()
        k1, k2 = key(), key()
        hub.stored(second, 8, record(k2))  # the later position is acknowledged first
        await settle()
        assert watcher.queued == 0, "8 went out while 7 could still arrive"
        hub.stored(first, 7, record(k1))
        changes = await take(watcher, 2)
        assert [(c.position, c.key) for c in changes] == [(7, k1), (8, k2)]


async def test_a_failed_append_releases_what_waited_behind_it() -> None:
    async with running(WatchHub()) as hub:
        watcher, _ = hub.watch(WatchSubset("acme"), 0)
        conflicted, stored = hub.begin(), hub.begin()
        hub.stored(stored, 5, record(key()))
        await settle()
        assert watcher.queued == 0
        hub.not_stored(conflicted)
        assert [c.position for c in await take(watcher, 1)] == [5]


async def test_a_filter_sees_the_state_after_the_change() -> None:
    async with running(WatchHub()) as hub:
        rich = WatchSubset("acme", predicate=lambda v: v.state["balance"] > 10)
        watcher, _ = hub.watch(rich, 0)
        for position, balance in ((1, 5), (2, 50)):
            ticket = hub.begin()
            hub.stored(ticket, position, record(key()), {"balance": balance})
        (change,) = await take(watcher, 1)
        assert (change.position, change.state) == (2, {"balance": 50})


async def test_a_watcher_that_does_not_read_is_ended_and_others_go_on() -> None:
    limits = WatchLimits(queue_changes=3)
    async with running(WatchHub(limits)) as hub:
        slow, _ = hub.watch(WatchSubset("acme"), 0)
        fast, _ = hub.watch(WatchSubset("acme"), 0)
        seen = []
        for position in range(1, 11):
            hub.stored(hub.begin(), position, record(key()))
            seen += [c.position for c in await take(fast, 1)]
        assert seen == list(range(1, 11))
        assert slow.queued == 0, "the slow watcher's queue was not dropped"
        with pytest.raises(WatcherTooSlowError) as ended:
            await slow.next()
        assert isinstance(ended.value, ResourceExhaustedError)
        assert hub.watchers == 1


async def test_a_queue_is_bounded_in_bytes_too() -> None:
    limits = WatchLimits(queue_bytes=2000)
    async with running(WatchHub(limits)) as hub:
        watcher, _ = hub.watch(WatchSubset("acme"), 0)
        for position in range(1, 4):
            hub.stored(hub.begin(), position, record(key(), note="x" * 800))
        await settle()
        assert isinstance(watcher.ended, WatcherTooSlowError)
        assert watcher.queued_bytes == 0


async def test_resume_from_the_buffer_or_from_the_stream() -> None:
    limits = WatchLimits(buffer_changes=3)
    async with running(WatchHub(limits)) as hub:
        for position in range(10, 16):
            hub.stored(hub.begin(), position, record(key()))
        await settle()
        assert hub.floor("acme") == 12  # 13, 14, 15 are buffered
        _, backlog = hub.watch(WatchSubset("acme"), 13)
        assert backlog is not None
        assert [c.position for c in backlog] == [14, 15]
        _, too_old = hub.watch(WatchSubset("acme"), 11)
        assert too_old is None
        _, unknown_tenant = hub.watch(WatchSubset("other"), 3)
        assert unknown_tenant is None


async def test_watchers_see_only_their_tenant_type_and_aggregate() -> None:
    async with running(WatchHub()) as hub:
        mine, theirs = key("acme"), key("globex")
        other_type = AggregateKey("acme", "invoice", uuid7())
        tenant_watch, _ = hub.watch(WatchSubset("acme"), 0)
        type_watch, _ = hub.watch(WatchSubset("acme", aggregate_type="invoice"), 0)
        one_watch, _ = hub.watch(WatchSubset("acme", aggregate_id=mine.aggregate_id), 0)
        for position, k in enumerate((mine, theirs, other_type), start=1):
            hub.stored(hub.begin(), position, record(k))
        assert [c.key for c in await take(tenant_watch, 2)] == [mine, other_type]
        assert [c.key for c in await take(type_watch, 1)] == [other_type]
        assert [c.key for c in await take(one_watch, 1)] == [mine]
        await settle()
        assert (tenant_watch.queued, type_watch.queued, one_watch.queued) == (0, 0, 0)
        _, backlog = hub.watch(WatchSubset("globex"), 1)
        assert backlog is not None
        assert [c.key for c in backlog] == [theirs]


async def test_an_unknown_outcome_ends_the_tenants_watches_and_the_buffer() -> None:
    async with running(WatchHub()) as hub:
        hub.stored(hub.begin(), 1, record(key()))
        await settle()
        acme, _ = hub.watch(WatchSubset("acme"), 0)
        globex, _ = hub.watch(WatchSubset("globex"), 0)
        hub.unknown(hub.begin(), "acme")
        with pytest.raises(WatchInterruptedError):
            await acme.next()
        assert globex.ended is None
        assert hub.floor("acme") is None
        _, backlog = hub.watch(WatchSubset("acme"), 0)
        assert backlog is None, "a from-now watch must read the stream while in doubt"
        hub.stored(hub.begin(), 9, record(key()))
        await settle()
        assert hub.floor("acme") == 8


async def test_a_tenant_that_leaves_and_a_shutdown_end_watches() -> None:
    async with running(WatchHub()) as hub:
        acme, _ = hub.watch(WatchSubset("acme"), 0)
        globex, _ = hub.watch(WatchSubset("globex"), 0)
        assert hub.forget_tenant("acme", owner="shard-b") == 1
        with pytest.raises(WatchTenantMovedError, match="shard-b"):
            await acme.next()
        hub.close()
        with pytest.raises(WatchInterruptedError):
            await globex.next()
        with pytest.raises(WatchInterruptedError):
            hub.watch(WatchSubset("acme"), 0)
        assert hub.watchers == 0


async def test_max_watchers() -> None:
    hub = WatchHub(WatchLimits(max_watchers=2))
    first, _ = hub.watch(WatchSubset("acme"), 0)
    hub.watch(WatchSubset("acme"), 0)
    with pytest.raises(ResourceExhaustedError, match="max watchers"):
        hub.watch(WatchSubset("acme"), 0)
    first.close()
    hub.watch(WatchSubset("acme"), 0)


async def test_a_view_for_the_filter() -> None:
    k = key()
    change = Change.of(
        k, version=2, position=3, command_id=uuid.uuid4(), events=record(k, 2).events, state={}
    )
    seen: list[ChangeView] = []
    WatchSubset("acme", predicate=lambda v: seen.append(v) is None).matches(change)
    assert seen == [ChangeView(str(k.aggregate_id), 2, change.updated_at, {})]


class _SlowAcks(InMemoryEventStore):
    """Acknowledges appends in an order chosen by the test: held until released."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[anyio.Event] = []

    async def append(
        self, record: CommandRecord, *, expected_last_seq: int, context: RequestContext
    ) -> int:
        seq = await super().append(record, expected_last_seq=expected_last_seq, context=context)
        gate = anyio.Event()
        self.gates.append(gate)
        await gate.wait()
        return seq


def bank_handler(store: Any, hub: WatchHub) -> CommandHandler:
    types = StaticTypes(
        {TYPE: AggregateTypeSpec(TYPE, FunctionProgram(TYPE, bank.decide, bank.apply))}
    )
    return CommandHandler(
        store=store,
        types=types,
        settings=HandlerSettings(retry_backoff_s=0),
        change_sink=TeeSink(ChangeFeed(), hub),
    )


async def test_the_handler_feeds_every_change_in_order_with_its_state() -> None:
    store = _SlowAcks()
    async with running(WatchHub()) as hub:
        handler = bank_handler(store, hub)
        watcher, _ = hub.watch(WatchSubset("acme"), 0)
        keys = [key() for _ in range(4)]
        async with anyio.create_task_group() as tg:
            for k in keys:
                tg.start_soon(
                    handler.handle,
                    Command(k, uuid7(), {"type": "OpenAccount", "owner": "ann"}),
                )
            with anyio.fail_after(5):
                while len(store.gates) < len(keys):
                    await anyio.lowlevel.checkpoint()
            for gate in reversed(store.gates):  # acknowledge the last stored first
                gate.set()
        changes = await take(watcher, 4)
        assert [c.position for c in changes] == sorted(c.position for c in changes)
        assert {c.key for c in changes} == set(keys)
        assert all(c.state is not None and c.state["owner"] == "ann" for c in changes)


async def test_a_backend_failure_is_an_unknown_outcome() -> None:
    class Broken(InMemoryEventStore):
        async def append(self, *args: Any, **kwargs: Any) -> int:
            raise BackendUnavailableError("down")

    async with running(WatchHub()) as hub:
        handler = bank_handler(Broken(), hub)
        watcher, _ = hub.watch(WatchSubset("acme"), 0)
        with pytest.raises(BackendUnavailableError):
            await handler.handle(Command(key(), uuid7(), {"type": "OpenAccount", "owner": "a"}))
        assert isinstance(watcher.ended, WatchInterruptedError)
