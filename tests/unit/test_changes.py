"""The change feed: what the handler offers, and the watermark rule of
``aggregate.application.changes``."""

from __future__ import annotations

from typing import Any

import pytest

from aggregate.application.changes import ChangeFeed
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.domain.changes import CommittedChange
from aggregate.domain.errors import BackendUnavailableError, CommandRejectedError
from aggregate.domain.ids import uuid7
from aggregate.programs.base import AggregateTypeSpec
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram, StaticTypes
from specs import bank
from tests.unit.test_handler import TYPE, cmd, new_key


class Recorder:
    def __init__(self) -> None:
        self.changes: list[CommittedChange] = []

    def deliver(self, change: CommittedChange) -> None:
        self.changes.append(change)


class Broken:
    def deliver(self, change: CommittedChange) -> None:
        raise RuntimeError("consumer bug")


def fed_handler(feed: ChangeFeed, store: Any = None) -> CommandHandler:
    types = StaticTypes(
        {TYPE: AggregateTypeSpec(TYPE, FunctionProgram(TYPE, bank.decide, bank.apply))}
    )
    return CommandHandler(
        store=store or InMemoryEventStore(),
        types=types,
        change_sink=feed,
        settings=HandlerSettings(retry_backoff_s=0),
    )


@pytest.mark.trio
async def test_each_stored_command_is_offered_once_with_its_state() -> None:
    recorder = Recorder()
    feed = ChangeFeed([Broken(), recorder])  # a failing reader does not fail commands
    h = fed_handler(feed)
    key, other = new_key(), new_key("globex")
    opened = cmd(key, {"type": "OpenAccount", "owner": "ann"})
    await h.handle(opened)
    await h.handle(cmd(other, {"type": "OpenAccount", "owner": "bob"}))
    deposit = cmd(key, {"type": "Deposit", "amount": 5})
    await h.handle(deposit)
    await h.handle(deposit)  # a duplicate stores nothing: nothing offered
    with pytest.raises(CommandRejectedError):
        await h.handle(cmd(key, {"type": "Withdraw", "amount": 50}))
    seen = [(c.key, c.position, c.previous_position, c.version, c.state) for c in recorder.changes]
    assert seen == [
        (key, 1, 0, 1, {"owner": "ann", "balance": 0}),
        (other, 2, 0, 1, {"owner": "bob", "balance": 0}),
        (key, 3, 1, 2, {"owner": "ann", "balance": 5}),
    ]
    assert [c.command_id for c in recorder.changes] == [
        opened.command_id,
        recorder.changes[1].command_id,
        deposit.command_id,
    ]
    assert recorder.changes[2].updated_at == recorder.changes[2].events[-1].timestamp
    assert (feed.watermark("acme"), feed.watermark("globex"), feed.watermark("initech")) == (
        3,
        3,
        3,
    )
    assert feed.frontier().held == {}


@pytest.mark.trio
async def test_a_lost_acknowledgement_holds_the_tenant_until_a_replay() -> None:
    store = InMemoryEventStore()
    feed = ChangeFeed()
    h = fed_handler(feed, store)
    key = new_key()
    await h.handle(cmd(key, {"type": "OpenAccount", "owner": "ann"}))
    store.lose_next_ack()
    with pytest.raises(BackendUnavailableError):
        await h.handle(cmd(key, {"type": "Deposit", "amount": 1}))  # stored at 2, not offered
    await h.handle(cmd(new_key("globex"), {"type": "OpenAccount", "owner": "bob"}))
    assert feed.uncertain_tenants() == ["acme"]
    assert (feed.watermark("acme"), feed.watermark("globex")) == (1, 3)
    mark = feed.replay_mark()
    feed.replayed("acme", mark, stream_end=3)
    assert feed.uncertain_tenants() == []
    assert feed.watermark("acme") == 3


def test_out_of_order_offers_hold_the_watermark_below_open_appends() -> None:
    """Two appends in flight: the later-numbered one answers first. Until the other ends,
    its message could still be below: the watermark stays at the floor."""
    feed = ChangeFeed(known=10)
    first = feed.append_started("acme")
    second = feed.append_started("acme")
    feed.offer(change_at(12))
    feed.append_ended(second, uncertain=False)
    assert (feed.known, feed.watermark("acme"), feed.watermark("globex")) == (12, 10, 12)
    third = feed.append_started("acme")  # floor 12: anything it stores lands above 12
    feed.offer(change_at(11))
    feed.append_ended(first, uncertain=False)
    assert feed.watermark("acme") == 12
    feed.append_ended(third, uncertain=False)
    assert feed.watermark("acme") == 12
    assert feed.frontier().watermark("acme") == 12


def test_a_replay_started_before_an_uncertain_end_does_not_resolve_it() -> None:
    feed = ChangeFeed(known=5)
    ticket = feed.append_started("acme")
    mark = feed.replay_mark()  # the replay reads the stream now ...
    feed.append_ended(ticket, uncertain=True)  # ... the append may store after that read
    feed.replayed("acme", mark, stream_end=5)
    assert feed.watermark("acme") == 5
    assert feed.uncertain_tenants() == ["acme"]
    later = feed.replay_mark()
    feed.replayed("acme", later, stream_end=6)
    assert feed.uncertain_tenants() == []
    assert feed.watermark("acme") == 6


def change_at(position: int) -> CommittedChange:
    return CommittedChange(new_key(), position, 0, 1, uuid7(), (), {})
