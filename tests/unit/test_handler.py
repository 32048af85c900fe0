"""Command handler paths the state machine does not reach on its own."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest

from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import Command, CommandRecord, events_from_decision
from aggregate.domain.errors import (
    AggregateNotFoundError,
    BackendUnavailableError,
    DuplicateAppendError,
    TenantAccessDeniedError,
    UnknownAggregateTypeError,
    VersionConflictError,
)
from aggregate.domain.ids import AggregateKey, uuid7
from aggregate.programs.base import AggregateTypeSpec
from aggregate.testing.memory_snapshots import InMemorySnapshotStore
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram, StaticTypes
from specs import bank

pytestmark = pytest.mark.trio
TYPE = "bank-account"


def handler(store: Any = None, **kwargs: Any) -> CommandHandler:
    types = StaticTypes(
        {TYPE: AggregateTypeSpec(TYPE, FunctionProgram(TYPE, bank.decide, bank.apply))}
    )
    settings = kwargs.pop("settings", HandlerSettings(retry_backoff_s=0))
    return CommandHandler(
        store=store or InMemoryEventStore(), types=types, settings=settings, **kwargs
    )


def cmd(key: AggregateKey, payload: dict[str, Any], **kw: Any) -> Command:
    return Command(key, uuid7(), payload, RequestContext.new(), **kw)


def new_key(tenant: str = "acme") -> AggregateKey:
    return AggregateKey(tenant, TYPE, uuid7())


async def test_open_deposit_withdraw_and_get() -> None:
    h = handler()
    key = new_key()
    r1 = await h.handle(cmd(key, {"type": "OpenAccount", "owner": "ann"}))
    r2 = await h.handle(cmd(key, {"type": "Deposit", "amount": 50}))
    r3 = await h.handle(cmd(key, {"type": "Withdraw", "amount": 20}))
    assert [r.version for r in (r1, r2, r3)] == [1, 2, 3]
    view = await h.get(key)
    assert (view.version, view.state["balance"]) == (3, 30)
    assert [e.event_type for e in await h.events(key)] == [
        "AccountOpened",
        "MoneyDeposited",
        "MoneyWithdrawn",
    ]
    assert len(h.locks) == 0


async def test_get_of_unknown_aggregate_is_not_found_and_type_must_exist() -> None:
    h = handler()
    with pytest.raises(AggregateNotFoundError):
        await h.get(new_key())
    with pytest.raises(UnknownAggregateTypeError, match="configured types: bank-account"):
        await h.get(AggregateKey("acme", "nope", uuid7()))


async def test_forged_record_of_another_tenant_is_permission_denied() -> None:
    store = InMemoryEventStore()
    key = new_key("acme")
    forged_key = AggregateKey("globex", key.aggregate_type, key.aggregate_id)
    forged = CommandRecord(
        forged_key,
        uuid7(),
        "c",
        "t",
        1,
        events_from_decision([{"type": "AccountOpened", "owner": "x"}], first_version=1),
    )
    store.publish_raw(key.subject, forged.encode())  # under acme's subject
    h = handler(store)
    with pytest.raises(TenantAccessDeniedError, match="belongs to tenant 'globex'"):
        await h.handle(cmd(key, {"type": "Deposit", "amount": 1}))


class AlwaysConflicting(InMemoryEventStore):
    async def append(self, record: Any, *, expected_last_seq: int, context: Any) -> int:
        self.appends += 1
        raise VersionConflictError("wrong last sequence")


async def test_conflicts_are_retried_up_to_max_retries_then_aborted() -> None:
    store = AlwaysConflicting()
    h = handler(store, settings=HandlerSettings(max_retries=2, retry_backoff_s=0.001))
    with pytest.raises(VersionConflictError, match="after 2 retries"):
        await h.handle(cmd(new_key(), {"type": "OpenAccount", "owner": "ann"}))
    assert store.appends == 3


async def test_unknown_outcome_drops_the_cache_and_a_retry_answers_the_stored_result() -> None:
    store = InMemoryEventStore()
    h = handler(store)
    key = new_key()
    await h.handle(cmd(key, {"type": "OpenAccount", "owner": "ann"}))
    store.lose_next_ack()
    command = cmd(key, {"type": "Deposit", "amount": 7})
    with pytest.raises(BackendUnavailableError):
        await h.handle(command)
    assert h.cache.get(key) is None
    again = await h.handle(command)
    assert (again.version, again.duplicate) == (2, True)
    assert (await h.get(key)).state["balance"] == 7
    assert len(store.messages) == 2


class HangsAfterStoring(InMemoryEventStore):
    """Stores the message, then never answers (until cancelled)."""

    hang = False
    stored = anyio.Event()

    async def append(self, record: Any, *, expected_last_seq: int, context: Any) -> int:
        seq = await super().append(record, expected_last_seq=expected_last_seq, context=context)
        if self.hang:
            self.stored.set()
            await anyio.sleep_forever()
        return seq


async def test_cancelled_append_drops_the_cache_entry_and_nothing_is_lost() -> None:
    store = HangsAfterStoring()
    h = handler(store)
    key = new_key()
    await h.handle(cmd(key, {"type": "OpenAccount", "owner": "ann"}))
    store.hang = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.handle, cmd(key, {"type": "Deposit", "amount": 3}))
        await store.stored.wait()
        tg.cancel_scope.cancel()
    assert h.cache.get(key) is None
    assert len(h.locks) == 0
    store.hang = False
    view = await h.get(key)
    assert (view.version, view.state["balance"]) == (2, 3)


async def test_snapshots_are_offered_at_the_threshold_and_used_on_restart() -> None:
    store, snaps = InMemoryEventStore(), InMemorySnapshotStore()
    settings = HandlerSettings(snapshot_threshold=3, retry_backoff_s=0)
    h = handler(store, snapshots=snaps, snapshot_sink=snaps, settings=settings)
    key = new_key()
    await h.handle(cmd(key, {"type": "OpenAccount", "owner": "ann"}))
    for _ in range(4):
        await h.handle(cmd(key, {"type": "Deposit", "amount": 1}))
    assert snaps.offered == 1
    snapshot = await snaps.load(key)
    assert snapshot is not None
    assert snapshot.version == 3
    restarted = handler(store, snapshots=snaps, snapshot_sink=snaps, settings=settings)
    view = await restarted.get(key)
    assert (view.version, view.state["balance"]) == (5, 4)


async def test_zero_events_answers_the_current_version_and_appends_nothing() -> None:
    def decide(state: dict[str, Any], command: dict[str, Any]) -> list[dict[str, Any]]:
        return []

    store = InMemoryEventStore()
    types = StaticTypes({TYPE: AggregateTypeSpec(TYPE, FunctionProgram(TYPE, decide, bank.apply))})
    h = CommandHandler(store=store, types=types)
    result = await h.handle(cmd(new_key(), {"type": "Noop"}))
    assert (result.version, result.events, result.duplicate) == (0, (), False)
    assert store.messages == []


async def test_cache_is_bounded() -> None:
    h = handler(settings=HandlerSettings(cache_size=3, retry_backoff_s=0))
    for _ in range(10):
        await h.handle(cmd(new_key(), {"type": "OpenAccount", "owner": "ann"}))
    assert len(h.cache) == 3


async def test_same_aggregate_id_under_two_tenants_is_two_aggregates() -> None:
    h = handler()
    agg = uuid.uuid4()
    a, b = AggregateKey("acme", TYPE, agg), AggregateKey("globex", TYPE, agg)
    await h.handle(cmd(a, {"type": "OpenAccount", "owner": "a"}))
    await h.handle(cmd(a, {"type": "Deposit", "amount": 5}))
    with pytest.raises(AggregateNotFoundError):
        await h.get(b)
    await h.handle(cmd(b, {"type": "OpenAccount", "owner": "b"}))
    assert (await h.get(a)).state == {"owner": "a", "balance": 5}
    assert (await h.get(b)).state == {"owner": "b", "balance": 0}


async def test_forgotten_non_v7_id_repeated_within_the_window_answers_the_original() -> None:
    """Beyond the history, a non-v7 id is still caught by the store's message-id window:
    the original result comes back and nothing is appended twice."""
    store = InMemoryEventStore()
    h = handler(store, settings=HandlerSettings(history_limit=2, retry_backoff_s=0))
    key = new_key()
    await h.handle(cmd(key, {"type": "OpenAccount", "owner": "ann"}))
    first = Command(key, uuid.uuid4(), {"type": "Deposit", "amount": 5})
    original = await h.handle(first)
    for _ in range(3):  # push the first deposit's id out of the history
        # Non-v7 ids here too: a forgotten v7 id would set the horizon, and a v7 id made in
        # the same millisecond would then be refused as too old (the horizon is in ms).
        await h.handle(Command(key, uuid.uuid4(), {"type": "Deposit", "amount": 1}))
    again = await h.handle(first)
    assert again.duplicate
    assert (again.version, again.events) == (original.version, original.events)
    assert len(store.messages) == 5
    assert (await h.get(key)).state["balance"] == 8


class DuplicateAfterStoring(InMemoryEventStore):
    """Stores the message, then answers as a de-duplicated retry would (a clustered
    JetStream after a leader change): the handler must recognise its own append."""

    async def append(self, record: Any, *, expected_last_seq: int, context: Any) -> int:
        seq = await super().append(record, expected_last_seq=expected_last_seq, context=context)
        raise DuplicateAppendError("already stored", seq=seq)


async def test_own_append_reported_as_duplicate_is_a_first_application() -> None:
    store = DuplicateAfterStoring()
    h = handler(store)
    key = new_key()
    opened = await h.handle(cmd(key, {"type": "OpenAccount", "owner": "ann"}))
    deposit = await h.handle(cmd(key, {"type": "Deposit", "amount": 4}))
    assert (opened.duplicate, deposit.duplicate) == (False, False)
    assert (opened.version, deposit.version) == (1, 2)
    assert len(store.messages) == 2
    assert (await h.get(key)).state["balance"] == 4


async def test_positions_are_the_stream_sequences_of_the_messages() -> None:
    """Every answer carries the stream sequence of its message: a new command its own, a
    duplicate the original's, a command with no events the aggregate's last, a read too."""

    def decide(state: dict[str, Any], command: dict[str, Any]) -> Any:
        return [] if command["type"] == "Noop" else bank.decide(state, command)

    store = InMemoryEventStore()
    types = StaticTypes({TYPE: AggregateTypeSpec(TYPE, FunctionProgram(TYPE, decide, bank.apply))})
    h = CommandHandler(store=store, types=types)
    key, other = new_key(), new_key()
    assert (await h.handle(cmd(key, {"type": "Noop"}))).position == 0
    opened = await h.handle(cmd(key, {"type": "OpenAccount", "owner": "ann"}))
    await h.handle(cmd(other, {"type": "OpenAccount", "owner": "bob"}))
    deposit = cmd(key, {"type": "Deposit", "amount": 5})
    deposited = await h.handle(deposit)
    await h.handle(cmd(other, {"type": "Deposit", "amount": 1}))
    assert (opened.position, deposited.position) == (1, 3)
    again = await h.handle(deposit)
    assert (again.duplicate, again.position) == (True, 3)
    nothing = await h.handle(cmd(key, {"type": "Noop"}))
    assert (nothing.events, nothing.position) == ((), 3)
    assert (await h.get(key)).position == 3
    assert (await h.get(other)).position == 4
    h.cache.discard(key)  # from the store, not the cache
    assert (await h.get(key)).position == 3


async def test_own_append_reported_as_duplicate_answers_its_position() -> None:
    store = DuplicateAfterStoring()
    h = handler(store)
    key = new_key()
    await h.handle(cmd(key, {"type": "OpenAccount", "owner": "ann"}))
    deposit = await h.handle(cmd(key, {"type": "Deposit", "amount": 4}))
    assert deposit.position == 2


async def test_a_lost_ack_retried_answers_the_stored_position() -> None:
    store = InMemoryEventStore()
    h = handler(store)
    key = new_key()
    await h.handle(cmd(key, {"type": "OpenAccount", "owner": "ann"}))
    store.conflict_next_ack()
    deposited = await h.handle(cmd(key, {"type": "Deposit", "amount": 7}))
    assert (deposited.duplicate, deposited.position) == (False, 2)
