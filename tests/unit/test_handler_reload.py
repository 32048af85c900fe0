"""The handler across a program reload: a command keeps the programs it started with,
records their version, and leaves nothing a rebuild would have to undo."""

from __future__ import annotations

from typing import Any

import pytest

from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import Command
from aggregate.domain.ids import AggregateKey, uuid7
from aggregate.programs.base import AggregateTypeSpec
from aggregate.programs.registry import ProgramRegistry
from aggregate.testing.memory_snapshots import InMemorySnapshotStore
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram
from specs import bank

pytestmark = pytest.mark.trio
TYPE = "bank-account"


def spec(version: str, decide: Any = bank.decide, apply: Any = bank.apply) -> AggregateTypeSpec:
    return AggregateTypeSpec(TYPE, FunctionProgram(TYPE, decide, apply), version=version)


def setup() -> tuple[CommandHandler, ProgramRegistry, InMemoryEventStore, InMemorySnapshotStore]:
    registry = ProgramRegistry({TYPE: spec("v1")})
    store, snapshots = InMemoryEventStore(), InMemorySnapshotStore()
    handler = CommandHandler(
        store=store,
        types=registry,
        snapshots=snapshots,
        snapshot_sink=snapshots,
        settings=HandlerSettings(retry_backoff_s=0, snapshot_threshold=1),
    )
    return handler, registry, store, snapshots


def command(key: AggregateKey, payload: dict[str, Any]) -> Command:
    return Command(key, uuid7(), payload, RequestContext.new())


async def test_a_command_finishes_on_its_version_and_leaves_no_cache_or_snapshot() -> None:
    handler, registry, store, snapshots = setup()
    key = AggregateKey("acme", TYPE, uuid7())
    await handler.handle(command(key, {"type": "OpenAccount", "owner": "ann"}))
    assert store.messages[-1].headers["program-version"] == "v1"
    offered = snapshots.offered

    def decide_then_reload(state: Any, payload: Any) -> Any:
        registry.replace({TYPE: spec("v2")})  # a reload lands while this command decides
        return bank.decide(state, payload)

    registry.replace({TYPE: spec("v1", decide_then_reload)})
    await handler.handle(command(key, {"type": "Deposit", "amount": 5}))
    assert store.messages[-1].headers["program-version"] == "v1"
    assert handler.cache.get(key) is None  # loaded afresh, by v2, next time
    assert snapshots.offered == offered  # no state of the replaced programs is snapshotted
    await handler.handle(command(key, {"type": "Deposit", "amount": 1}))
    assert store.messages[-1].headers["program-version"] == "v2"
    assert snapshots.offered > offered  # the current programs snapshot again


async def test_ignored_snapshots_are_not_loaded_until_the_rebuild_ends() -> None:
    handler, registry, _, snapshots = setup()
    key = AggregateKey("acme", TYPE, uuid7())
    await handler.handle(command(key, {"type": "OpenAccount", "owner": "ann"}))
    await handler.handle(command(key, {"type": "Deposit", "amount": 5}))
    assert len(snapshots) == 1

    def counting_apply(state: Any, event: Any) -> Any:
        return {**bank.apply(state, event), "events": state.get("events", 0) + 1}

    registry.replace({TYPE: spec("v2", apply=counting_apply)})
    handler.ignore_snapshots([TYPE], True)
    handler.cache.discard_types([TYPE])
    view = await handler.get(key)  # replayed from the events with the new apply
    assert view.state == {"owner": "ann", "balance": 5, "events": 2}
    handler.ignore_snapshots([TYPE], False)
    handler.cache.discard_types([TYPE])
    view = await handler.get(key)  # the (old) snapshot is used again
    assert view.state == {"owner": "ann", "balance": 5}
