"""Watches vs the model (``specs.watch``): the real handler, change feed and watch hub on the
in-memory store, commands committed concurrently with acknowledgements in a Hypothesis-chosen
order, watches opened from now or from any position, read or left unread (too slow), ended
by faults and restarts, resumed from their last position; what every watch delivered, across
all its resumes, is always a prefix of the model's list and all of it once it is read."""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import hypothesis.strategies as st
from anyio.from_thread import start_blocking_portal
from hypothesis import note, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from aggregate.application.changes import ChangeFeed
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import Command, CommandRecord
from aggregate.domain.errors import AggregateError, BackendUnavailableError
from aggregate.domain.ids import AggregateKey, uuid7
from aggregate.programs.base import AggregateTypeSpec
from aggregate.testing.memory_changes import MemoryChangeSource
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram, StaticTypes
from aggregate.watch.changes import Change, WatchSubset
from aggregate.watch.follow import Follow
from aggregate.watch.hub import WatchHub, WatchLimits
from aggregate.watch.sink import TeeSink
from specs import bank
from specs.model import Model, ModelResult, ModelType
from specs.watch import ModelChange, ModelSubset, watched

if TYPE_CHECKING:
    from anyio.abc import BlockingPortal

TYPE = "bank-account"
TENANTS = ("acme", "globex")
QUEUE = 4
BUFFER = 6


class HeldAcks(InMemoryEventStore):
    """Stores each append at once, answers it when the machine releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[anyio.Event] = []
        self.holding = True

    async def append(
        self, record: CommandRecord, *, expected_last_seq: int, context: RequestContext
    ) -> int:
        seq = await super().append(record, expected_last_seq=expected_last_seq, context=context)
        if not self.holding:
            return seq
        gate = anyio.Event()
        self.held.append(gate)
        await gate.wait()
        return seq


def rich(state: dict[str, Any]) -> bool:
    balance = state.get("balance")
    return isinstance(balance, int) and balance >= 50


@dataclass
class Watch:
    subset: ModelSubset
    real: WatchSubset
    start: int
    reading: bool
    got: list[Change] = field(default_factory=list)
    follow: Follow | None = None
    scope: anyio.CancelScope | None = None
    ended: AggregateError | None = None


class WatchMachine(RuleBasedStateMachine):
    aggregate_ids = Bundle("aggregate_ids")

    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = start_blocking_portal("trio")
        self.portal: BlockingPortal = self._portal_cm.__enter__()
        self.store = HeldAcks()
        self.source = MemoryChangeSource(self.store)
        self.types = StaticTypes(
            {TYPE: AggregateTypeSpec(TYPE, FunctionProgram(TYPE, bank.decide, bank.apply))}
        )
        self.model = Model({TYPE: ModelType(bank.decide, bank.apply)}, history_limit=1000)
        self.changes: list[ModelChange] = []
        self.watches: list[Watch] = []
        self.hub_scope: anyio.CancelScope | None = None
        self.start_node()
        # The stream is never empty here: resuming "after 0" would mean "from now".
        self.store.holding = False
        opening = {"type": "OpenAccount", "owner": "s"}
        seed = Command(AggregateKey("seed", TYPE, uuid7()), uuid7(), opening)
        self.portal.call(self.handler.handle, seed)
        self.store.holding = True

    def teardown(self) -> None:
        self.stop_node()
        self._portal_cm.__exit__(None, None, None)

    # --- the node --------------------------------------------------------------
    def start_node(self) -> None:
        self.hub = WatchHub(WatchLimits(queue_changes=QUEUE, buffer_changes=BUFFER))
        self.hub.start_after(self.store.last_seq_overall)
        self.handler = CommandHandler(
            store=self.store,
            types=self.types,
            settings=HandlerSettings(retry_backoff_s=0),
            change_sink=TeeSink(ChangeFeed(), self.hub),
        )

        async def serve(task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            with anyio.CancelScope() as scope:
                self.hub_scope = scope
                await self.hub.serve(task_status=task_status)

        self.portal.start_task(serve)

    def stop_node(self) -> None:
        self.portal.call(self.hub.close)
        if self.hub_scope is not None:
            self.portal.call(self.hub_scope.cancel)
        for watch in self.watches:
            self.stop_reader(watch)
        self.settle()

    # --- watches -----------------------------------------------------------------
    def start_reader(self, watch: Watch) -> None:
        follow = watch.follow
        assert follow is not None

        async def read(task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            with anyio.CancelScope() as scope:
                watch.scope = scope
                task_status.started()
                try:
                    async for change in follow.changes():
                        watch.got.append(change)
                except AggregateError as exc:
                    watch.ended = exc

        self.portal.start_task(read)

    def stop_reader(self, watch: Watch) -> None:
        if watch.scope is not None:
            self.portal.call(watch.scope.cancel)
            watch.scope = None
        if watch.follow is not None:
            self.portal.call(watch.follow.close)

    def settle(self) -> None:
        async def quiet() -> None:
            for _ in range(200):
                await anyio.lowlevel.checkpoint()

        self.portal.call(quiet)

    def expected(self, watch: Watch) -> list[ModelChange]:
        return watched(self.changes, watch.subset, watch.start)

    # --- rules -------------------------------------------------------------------
    @rule(target=aggregate_ids, tenant=st.sampled_from(TENANTS))
    def new_aggregate(self, tenant: str) -> tuple[str, uuid.UUID]:
        return tenant, uuid7()

    @rule(
        data=st.data(),
        batch=st.lists(
            st.tuples(
                aggregate_ids,
                st.one_of(
                    st.just({"type": "OpenAccount", "owner": "ann"}),
                    st.builds(lambda n: {"type": "Deposit", "amount": n}, st.integers(1, 60)),
                ),
            ),
            min_size=1,
            max_size=4,
            unique_by=lambda item: item[0],
        ),
    )
    def commit_concurrently(self, data: st.DataObject, batch: list[Any]) -> None:
        trial = copy.deepcopy(self.model)
        wanted = []
        for (tenant, agg), payload in batch:
            command = Command(AggregateKey(tenant, TYPE, agg), uuid7(), payload)
            wanted.append((command, trial.submit((tenant, TYPE, agg), command.command_id, payload)))
        appends = sum(1 for _, w in wanted if isinstance(w, ModelResult) and w.events)
        order = data.draw(st.permutations(range(appends)), label="acknowledgement order")
        results: list[Any] = [None] * len(wanted)

        async def run_all() -> None:
            async def one(i: int, command: Command) -> None:
                try:
                    results[i] = await self.handler.handle(command)
                except AggregateError as exc:
                    results[i] = exc

            async with anyio.create_task_group() as tg:
                for i, (command, _) in enumerate(wanted):
                    tg.start_soon(one, i, command)
                with anyio.fail_after(10):
                    while len(self.store.held) < appends:
                        await anyio.lowlevel.checkpoint()
                held, self.store.held = self.store.held, []
                for index in order:
                    held[index].set()
                    await anyio.lowlevel.checkpoint()

        self.portal.call(run_all)
        for (command, want), got in zip(wanted, results, strict=True):
            note(f"{command.key.aggregate_id} {command.payload} -> {got!r}")
            if isinstance(want, ModelResult):
                assert not isinstance(got, AggregateError), got
                assert got.version == want.version
                if want.events:
                    self.record(command.key, got.position, want.version, trial)
            else:
                assert isinstance(got, want)
        self.model = trial
        self.settle()

    def record(self, key: AggregateKey, position: int, version: int, model: Model) -> None:
        view = model.view((key.tenant_id, TYPE, key.aggregate_id))
        assert view is not None
        self.changes.append(
            ModelChange(position, key.tenant_id, TYPE, key.aggregate_id, version, view[1])
        )

    @rule(
        data=st.data(),
        tenant=st.sampled_from(TENANTS),
        by_type=st.booleans(),
        one=st.booleans(),
        filtered=st.booleans(),
        reading=st.booleans(),
    )
    def open_watch(
        self, data: st.DataObject, tenant: str, by_type: bool, one: bool, filtered: bool,
        reading: bool,
    ) -> None:  # fmt: skip
        aggregate_id = None
        if one:
            mine = [c.aggregate_id for c in self.changes if c.tenant == tenant]
            if mine:
                aggregate_id = data.draw(st.sampled_from(mine), label="aggregate")
        positions = [0, *(c.position for c in self.changes)]
        start = data.draw(st.sampled_from(positions), label="from_position")
        aggregate_type = TYPE if by_type else ""
        model = ModelSubset(tenant, aggregate_type, aggregate_id, rich if filtered else None)
        predicate = (lambda view: rich(view.state)) if filtered else None
        real = WatchSubset(tenant, aggregate_type, aggregate_id, predicate)
        watch = Watch(model, real, start or self.hub.watermark, reading)
        try:
            watch.follow = self.portal.call(self.follow, real, start)
        except AggregateError as exc:
            watch.ended = exc
        note(f"watch #{len(self.watches)}: {tenant} {aggregate_type!r} {aggregate_id} "
             f"filtered={filtered} after {watch.start} reading={reading}")  # fmt: skip
        self.watches.append(watch)
        if reading and watch.follow is not None:
            self.start_reader(watch)
            self.settle()

    def follow(self, subset: WatchSubset, start: int) -> Follow:
        return Follow(
            self.hub,
            subset,
            start,
            source=self.source,
            store=self.store,
            types=self.types,
            include_state=True,
        )

    @precondition(lambda self: self.watches)
    @rule(data=st.data())
    def resume_a_watch(self, data: st.DataObject) -> None:
        """A client leaves (or was ended) and comes back with the last position it saw."""
        watch = data.draw(st.sampled_from(self.watches), label="watch")
        self.stop_reader(watch)
        position = watch.got[-1].position if watch.got else watch.start
        if watch.follow is not None:
            # the x-resume-position: past the last change sent when it scanned others
            assert watch.follow.position >= position
            position = watch.follow.position
        watch.ended = None
        watch.reading = True
        note(f"resume watch #{self.watches.index(watch)} after {position}")
        watch.follow = self.portal.call(self.follow, watch.real, position)
        self.start_reader(watch)
        self.settle()

    @rule()
    def restart_node(self) -> None:
        self.stop_node()
        self.start_node()

    @rule(agg=aggregate_ids, amount=st.integers(1, 60), conflict=st.booleans())
    def append_with_unknown_outcome(
        self, agg: tuple[str, uuid.UUID], amount: int, conflict: bool
    ) -> None:
        """The append lands but its answer is lost (or a retried publish is answered with a
        conflict): the live feed never carries it, the stream does."""
        tenant, aggregate_id = agg
        payload = {"type": "Deposit", "amount": amount}
        trial = copy.deepcopy(self.model)
        command = Command(AggregateKey(tenant, TYPE, aggregate_id), uuid7(), payload)
        want = trial.submit((tenant, TYPE, aggregate_id), command.command_id, payload)
        if not (isinstance(want, ModelResult) and want.events):
            return
        if conflict:
            self.store.conflict_next_ack()
        else:
            self.store.lose_next_ack()

        async def run() -> Any:
            async def release() -> None:
                while not self.store.held:
                    await anyio.lowlevel.checkpoint()
                self.store.held.pop().set()

            outcome: Any = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(release)  # the store raises before it holds the answer
                try:
                    outcome = await self.handler.handle(command)
                except AggregateError as exc:
                    outcome = exc
                tg.cancel_scope.cancel()
            return outcome

        got = self.portal.call(run)
        note(f"unknown outcome ({'conflict' if conflict else 'lost ack'}): {got!r}")
        if conflict:
            assert not isinstance(got, AggregateError), got
        else:
            assert isinstance(got, BackendUnavailableError)
        self.record(command.key, self.store.last_seq_overall, want.version, trial)
        self.model = trial
        self.settle()

    # --- invariants --------------------------------------------------------------
    @invariant()
    def every_watch_delivered_a_prefix_of_the_model_and_all_of_it_when_read(self) -> None:
        for number, watch in enumerate(self.watches):
            want = self.expected(watch)
            got = [(c.position, c.key.aggregate_id, c.version, c.state) for c in watch.got]
            model = [(c.position, c.aggregate_id, c.version, c.state) for c in want]
            assert got == model[: len(got)], f"watch #{number}: {got} vs {model}"
            if watch.reading and watch.ended is None and watch.scope is not None:
                assert len(got) == len(model), f"watch #{number} is missing {model[len(got) :]}"

    @invariant()
    def unread_watches_hold_at_most_their_bound(self) -> None:
        for watch in self.watches:
            follow = watch.follow
            if follow is not None and not watch.reading:
                assert follow._watcher.queued <= QUEUE


TestWatchMachine = WatchMachine.TestCase
TestWatchMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
