"""Many shards vs ``specs.shards``: three nodes, each a real ``CommandHandler`` behind its own
``TenantGate``, over one shared event store. Rules kill and revive shards (failover and
failback of the ring tenants), move tenants (the move's steps: drain on the owner, the map
on every node, accept on the target, accept on the old owner), and submit commands to any
live node: the owner must answer as ``specs.model`` says, every other node must refuse
naming the owner and change nothing. The stored stream must stay the model's."""

from __future__ import annotations

import contextlib
import itertools
import uuid
from typing import Any

import anyio
import pytest
from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from aggregate.application.gate import TenantGate
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import Command, CommandResult
from aggregate.domain.errors import AggregateError, TenantUnavailableError
from aggregate.domain.ids import AggregateKey, uuid7_at
from aggregate.domain.placement import HashRing, PlacementDecision, PlacementMap
from aggregate.programs.base import AggregateTypeSpec
from aggregate.testing.memory_snapshots import InMemorySnapshotStore
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram, StaticTypes
from specs import bank
from specs.model import Model, ModelResult, ModelType
from specs.shards import ShardsModel

TYPE = "bank-account"
SHARDS = ("shard-a", "shard-b", "shard-c")
PROGRAM = FunctionProgram(TYPE, bank.decide, bank.apply)
TENANTS = ("acme", "globex", "initech", "umbrella", "hooli", "stark")


def ring_owner(live: frozenset[str], tenant: str) -> str | None:
    return HashRing(live).owner(tenant)


commands = st.one_of(
    st.just({"type": "OpenAccount", "owner": "ann"}),
    st.builds(lambda n: {"type": "Deposit", "amount": n}, st.integers(1, 50)),
    st.builds(lambda n: {"type": "Withdraw", "amount": n}, st.integers(1, 80)),
)


class ShardsMachine(RuleBasedStateMachine):
    tenants = Bundle("tenants")
    aggregate_ids = Bundle("aggregate_ids")

    def __init__(self) -> None:
        super().__init__()
        self._stack = contextlib.ExitStack()
        self.portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal("trio"))
        self.store = InMemoryEventStore()
        self.snapshots = InMemorySnapshotStore()
        self.model = Model({TYPE: ModelType(bank.decide, bank.apply)}, 4)
        self.shards = ShardsModel(SHARDS, ring_owner)
        self.pins: dict[str, str] = {}
        self.nodes: dict[str, tuple[TenantGate, CommandHandler]] = {}
        for shard in SHARDS:
            self.start(shard)
        self.clock_ms = 1_750_000_000_000
        self.counter = itertools.count()

    def teardown(self) -> None:
        self._stack.close()

    # ---- the real side --------------------------------------------------------------
    def decision(self, shard: str) -> PlacementDecision:
        placement = PlacementMap.of(self.pins) if self.pins else None
        return PlacementDecision(shard, placement).with_live_shards(self.shards.live)

    def start(self, shard: str) -> None:
        """A (re)started node: a fresh gate and handler (its cache starts empty)."""
        gate = TenantGate(self.decision(shard))
        handler = CommandHandler(
            store=self.store,
            types=StaticTypes(
                {TYPE: AggregateTypeSpec(TYPE, FunctionProgram(TYPE, bank.decide, bank.apply))}
            ),
            snapshots=self.snapshots,
            snapshot_sink=self.snapshots,
            gate=gate,
            settings=HandlerSettings(
                max_retries=3,
                snapshot_threshold=3,
                history_limit=4,
                cache_size=8,
                retry_backoff_s=0,
            ),
        )
        self.nodes[shard] = (gate, handler)

    def broadcast(self) -> None:
        """What every live node's watchers do: apply the current map and live set."""
        for shard in self.shards.live:
            gate, handler = self.nodes[shard]
            left = gate.apply(self.decision(shard)).left
            for tenant in left:
                handler.forget_tenant(tenant)

    def fresh_id(self) -> uuid.UUID:
        self.clock_ms += 1
        return uuid7_at(self.clock_ms, next(self.counter))

    # ---- rules ----------------------------------------------------------------------
    @initialize(target=tenants)
    def some_tenants(self) -> Any:
        return multiple(*TENANTS)

    @rule(target=aggregate_ids)
    def new_aggregate(self) -> uuid.UUID:
        return self.fresh_id()

    @precondition(lambda self: len(self.shards.live) > 1)
    @rule(shard=st.sampled_from(SHARDS))
    def kill(self, shard: str) -> None:
        """A shard dies; its directory entry expires and the others drop it."""
        note(f"kill {shard}")
        self.shards.kill(shard)
        self.broadcast()

    @rule(shard=st.sampled_from(SHARDS))
    def revive(self, shard: str) -> None:
        if shard in self.shards.live:
            return
        note(f"revive {shard}")
        self.shards.revive(shard)
        self.start(shard)
        self.broadcast()

    @rule(tenant=tenants, to=st.sampled_from(SHARDS))
    def move(self, tenant: str, to: str) -> None:
        target = to
        owner = self.shards.owner(tenant)
        moved = self.shards.move(tenant, target)
        note(f"move {tenant} from {owner} to {target}: {moved}")
        if not moved:
            return
        if owner in self.shards.live and owner != target:
            assert owner is not None
            drained = self.portal.call(self.nodes[owner][0].drain, tenant, 1.0)
            assert drained.drained  # nothing is in flight between rules
        self.pins[tenant] = target
        self.broadcast()
        self.nodes[target][0].accept(tenant)
        if owner in self.shards.live and owner != target:
            assert owner is not None
            self.nodes[owner][0].accept(tenant)

    @rule(
        shard=st.sampled_from(SHARDS),
        tenant=tenants,
        agg=aggregate_ids,
        payload=commands,
    )
    def submit(self, shard: str, tenant: str, agg: uuid.UUID, payload: dict[str, Any]) -> None:
        if shard not in self.shards.live:
            return  # nobody can reach a dead node
        command_id = self.fresh_id()
        command = Command(
            AggregateKey(tenant, TYPE, agg), command_id, payload, RequestContext.new()
        )
        try:
            got: CommandResult | AggregateError = self.portal.call(
                self.nodes[shard][1].handle, command
            )
        except AggregateError as exc:
            got = exc
        note(f"{shard}: {payload} on {tenant}/{agg} -> {got!r}")
        if not self.shards.accepts(shard, tenant):
            assert isinstance(got, TenantUnavailableError), got
            assert got.owner == self.shards.owner(tenant)
            return
        want = self.model.submit((tenant, TYPE, agg), command_id, payload)
        if isinstance(want, ModelResult):
            assert isinstance(got, CommandResult), (want, got)
            assert (got.version, got.duplicate) == (want.version, want.duplicate)
        else:
            assert isinstance(got, want), (want, got)

    # ---- invariants ---------------------------------------------------------------
    @invariant()
    def exactly_the_owner_accepts_each_tenant(self) -> None:
        for tenant in TENANTS:
            accepting = [s for s in self.shards.live if self.nodes[s][0].status(tenant).accepting]
            serving = self.shards.serving(tenant)
            assert accepting == ([serving] if serving else []), (tenant, accepting, serving)

    @invariant()
    def the_stream_is_the_models(self) -> None:
        for key, agg in self.model.aggregates.items():
            records = self.portal.call(self.store.read, AggregateKey(*key))
            versions = [e.version for r in records for e in r.record.events]
            assert versions == list(range(1, agg.version + 1)), (key, versions)
            ids = [r.record.command_id for r in records]
            assert len(ids) == len(set(ids))


TestShards = ShardsMachine.TestCase
TestShards.settings = settings(settings.default, max_examples=25)


@pytest.mark.slow
def test_large_budget() -> None:
    run_state_machine_as_test(ShardsMachine, settings=settings(settings.get_profile("slow")))
