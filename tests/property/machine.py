"""The handler state machine: the real handler(s) and the ``specs`` model side by side.

A ``World`` provides the event store (in memory, or a real JetStream), the snapshot store
and a blocking portal to run async code from Hypothesis' sync rules. Two handler instances
("nodes") share the world's store, so one's cache goes stale whenever the other writes.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from aggregate.adapters.grpc import convert
from aggregate.application.activity import ActivityTracker
from aggregate.application.changes import ChangeFeed
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.application.quota import Protection
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import Command, CommandResult
from aggregate.domain.errors import (
    AggregateError,
    AggregateNotFoundError,
    BackendUnavailableError,
    InvalidArgumentError,
    QuotaExceededError,
)
from aggregate.domain.ids import AggregateKey, uuid7_at
from aggregate.domain.quota import parse_quota_overrides
from aggregate.domain.schemas import CommandSchemas
from aggregate.gateway.v1 import aggregate_pb2 as pb
from aggregate.programs.base import AggregateTypeSpec
from aggregate.programs.registry import ProgramRegistry
from aggregate.testing.memory_snapshots import InMemorySnapshotStore
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram
from specs import bank, boundary
from specs.model import Model, ModelResult, ModelType
from specs.protection import Limits, QuotaModel, TenantUsage
from tests.property.query_rules import QueryRules

_IDLE = TenantUsage(Fraction(0))

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

    from aggregate.application.ports import EventStore

TYPE = "bank-account"
FIRST_VERSION = "standard-0"
HISTORY_LIMIT = 4
SNAPSHOT_THRESHOLD = 3
QUOTAS = {"acme": Limits(rate=2, burst=3, max_in_flight=1)}
"""Per node: acme is rate-limited (2/s, burst 3) and runs one command at a time; globex is
unlimited."""


@dataclass
class World:
    """What the machine runs against. Subclasses bring other stores."""

    portal: BlockingPortal
    store: EventStore
    snapshots: InMemorySnapshotStore = field(default_factory=InMemorySnapshotStore)
    supports_faults: bool = False
    tenant_prefix: str = ""
    program: Any = None
    registry: ProgramRegistry | None = None
    schemas: CommandSchemas | None = None  # the bank example's command schemas, or none
    reader: Any = None
    """The stream reader of the index (None: the store is its own, as in memory)."""
    changes: Any = None
    """The change feed the handlers report to (the machine's index reads it)."""

    def standard_program(self) -> Any:
        return self.program or FunctionProgram(TYPE, bank.decide, bank.apply)

    def model_schemas(self) -> dict[str, dict[str, Any]]:
        """The same schemas as plain JSON, for the model's own validator."""
        return dict(self.schemas.schemas) if self.schemas else {}

    def types(self) -> ProgramRegistry:
        """The programs every node serves (one registry: a reload reaches every node, and
        a restarted node serves what was reloaded last, as a restarted service would)."""
        if self.registry is None:
            spec = AggregateTypeSpec(
                TYPE, self.standard_program(), version=FIRST_VERSION, schemas=self.schemas
            )
            self.registry = ProgramRegistry({TYPE: spec})
        return self.registry

    def new_handler(self, protection: Protection | None = None) -> CommandHandler:
        return CommandHandler(
            store=self.store,
            types=self.types(),
            snapshots=self.snapshots,
            snapshot_sink=self.snapshots,
            protection=protection,
            change_sink=self.changes,
            settings=HandlerSettings(
                max_retries=3,
                snapshot_threshold=SNAPSHOT_THRESHOLD,
                history_limit=HISTORY_LIMIT,
                cache_size=8,
                retry_backoff_s=0,
            ),
            activity=ActivityTracker(),
        )

    def close(self) -> None:
        pass


commands = st.one_of(
    st.builds(
        lambda owner: {"type": "OpenAccount", "owner": owner}, st.sampled_from(["ann", "bo", ""])
    ),
    st.builds(lambda n: {"type": "Deposit", "amount": n}, st.integers(-5, 100)),
    st.builds(lambda n: {"type": "Withdraw", "amount": n}, st.integers(1, 150)),
    st.just({"type": "Deposit", "amount": "10"}),
    st.just({"type": "Withdraw"}),
    st.just({"type": "OpenAccount", "owner": 7}),
    st.just({"type": "Freeze"}),
)


def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


# Values of an extra payload field ``x`` (the bank rules ignore it), as JSON text: some
# within the boundary's bounds, some just past one (the payload object is one level).
extra_fields = st.sampled_from(
    [
        "1",
        _nested(63),
        _nested(64),
        "9" * 100,
        "-" + "9" * 101,
        '"\\ud83d\\ude00"',
        '"\\ud800"',
        "NaN",
        "-Infinity",
        "1e999",
        "1.5e308",
    ]
)


def spell(value: uuid.UUID, spelling: str) -> str:
    """An id as a client may write it; only ``lower`` and ``upper`` are canonical."""
    text = str(value)
    return {
        "lower": text,
        "upper": text.upper(),
        "braces": "{" + text + "}",
        "urn": "urn:uuid:" + text,
        "undashed": value.hex,
        "space": " " + text[1:],
        "plus": "+" + text[1:],
    }[spelling]


spellings = st.sampled_from(
    ["lower", "lower", "upper", "upper", "braces", "urn", "undashed", "space", "plus"]
)


class HandlerMachine(QueryRules, RuleBasedStateMachine):
    """Subclasses set ``make_world`` (a callable returning a World). The query rules
    (``tests.property.query_rules``) run an index beside the handlers."""

    make_world: ClassVar[Any]

    tenants = Bundle("tenants")
    aggregate_ids = Bundle("aggregate_ids")
    sent = Bundle("sent")

    def __init__(self) -> None:
        super().__init__()
        self.world: World = type(self).make_world()
        self.model = Model(
            {
                TYPE: ModelType(
                    bank.decide,
                    bank.apply,
                    version=FIRST_VERSION,
                    schemas=self.world.model_schemas(),
                )
            },
            HISTORY_LIMIT,
        )
        self.reloads = itertools.count(1)
        self.quota_now = 0.0  # the quotas' clock (seconds), advanced by a rule
        self.quotas = [QuotaModel(dict(QUOTAS)), QuotaModel(dict(QUOTAS))]
        self.held: list[list[Any]] = [[], []]  # admissions held open: commands in flight
        self.protections = [self.new_protection(), self.new_protection()]
        self.world.changes = ChangeFeed()
        self.nodes = [self.world.new_handler(p) for p in self.protections]
        self.start_index(self.world.changes)
        self.clock_ms = 1_750_000_000_000
        self.counter = itertools.count()
        self.retired_activity: dict[str, int] = {}
        """Commands counted by handlers a restart replaced."""

    def new_protection(self) -> Protection:
        overrides = {
            self.world.tenant_prefix + tenant: {
                "commands_per_second": limits.rate,
                "burst": limits.burst,
                "max_in_flight": limits.max_in_flight,
            }
            for tenant, limits in QUOTAS.items()
        }
        return Protection(
            file_overrides=parse_quota_overrides(overrides), clock=lambda: self.quota_now
        )

    def teardown(self) -> None:
        try:
            self.stop_index()
        finally:
            self.world.close()

    # ---- helpers --------------------------------------------------------------------
    def fresh_id(self, v7: bool = True) -> uuid.UUID:
        self.clock_ms += 1
        if v7:
            return uuid7_at(self.clock_ms, next(self.counter))
        return uuid.uuid4()

    def key(self, tenant: str, agg: uuid.UUID, kind: str = TYPE) -> AggregateKey:
        return AggregateKey(self.world.tenant_prefix + tenant, kind, agg)

    def quota_asked(self, kind: str, payload: dict[str, Any] | None) -> bool:
        """Whether a command gets as far as the quota: an unknown type or a payload that
        fails its command schema is refused before."""
        model_type = self.model.types.get(kind)
        return model_type is not None and (payload is None or model_type.payload_fits(payload))

    def admitted(
        self, node: int, tenant: str, kind: str = TYPE, payload: dict[str, Any] | None = None
    ) -> bool:
        """The model's quota decision for a command about to run on ``node`` (True when the
        quota is not asked); ``finish`` it after the run."""
        return not self.quota_asked(kind, payload) or self.quotas[node].admit(tenant)

    def finish(
        self, node: int, tenant: str, kind: str = TYPE, payload: dict[str, Any] | None = None
    ) -> None:
        if self.quota_asked(kind, payload):
            self.quotas[node].finish(tenant)

    def run(self, node: int, command: Command) -> CommandResult | AggregateError:
        try:
            return self.world.portal.call(self.nodes[node].handle, command)
        except AggregateError as exc:
            return exc

    def check(self, got: CommandResult | AggregateError, want: Any) -> None:
        note(f"  real: {got!r}")
        note(f"  model: {want!r}")
        if isinstance(want, ModelResult):
            assert isinstance(got, CommandResult), f"expected success {want}, got {got!r}"
            assert got.version == want.version
            assert got.duplicate == want.duplicate
            real_events = [(e.version, e.event_type, e.payload) for e in got.events]
            model_events = [(e.version, e.event_type, e.payload) for e in want.events]
            assert real_events == model_events
        else:
            assert isinstance(got, want), f"expected {want.__name__}, got {got!r}"

    def submit(
        self,
        node: int,
        tenant: str,
        agg: uuid.UUID,
        command_id: uuid.UUID,
        payload: dict[str, Any],
        expected_version: int | None = None,
        kind: str = TYPE,
    ) -> None:
        admitted = self.admitted(node, tenant, kind, payload)
        want = (
            self.model.submit((tenant, kind, agg), command_id, payload, expected_version)
            if admitted
            else QuotaExceededError
        )
        command = Command(
            self.key(tenant, agg, kind),
            command_id,
            payload,
            RequestContext.new(),
            expected_version=expected_version,
        )
        note(
            f"node {node}: {payload} id={command_id} expected={expected_version} on {tenant}/{agg}"
        )
        got = self.run(node, command)
        if admitted:
            self.finish(node, tenant, kind, payload)
        self.check(got, want)

    # ---- rules ----------------------------------------------------------------------
    @initialize(target=tenants)
    def two_tenants(self) -> Any:
        return multiple("acme", "globex")

    @rule(target=aggregate_ids, v7=st.booleans())
    def new_aggregate(self, v7: bool) -> uuid.UUID:
        return self.fresh_id(v7)

    @rule(
        target=sent,
        node=st.integers(0, 1),
        tenant=tenants,
        agg=aggregate_ids,
        payload=commands,
        v7=st.booleans(),
    )
    def submit_command(
        self, node: int, tenant: str, agg: uuid.UUID, payload: dict[str, Any], v7: bool
    ) -> tuple[str, uuid.UUID, uuid.UUID, dict[str, Any]]:
        command_id = self.fresh_id(v7)
        self.submit(node, tenant, agg, command_id, payload)
        return (tenant, agg, command_id, payload)

    @rule(
        node=st.integers(0, 1),
        tenant=tenants,
        agg=aggregate_ids,
        payload=commands,
        delta=st.sampled_from([0, 0, 1, -1]),
    )
    def submit_with_expected_version(
        self, node: int, tenant: str, agg: uuid.UUID, payload: dict[str, Any], delta: int
    ) -> None:
        current = self.model.aggregate((tenant, TYPE, agg)).version
        expected = max(0, current + delta)
        self.submit(node, tenant, agg, self.fresh_id(), payload, expected)

    @rule(node=st.integers(0, 1), previous=sent, other_payload=st.booleans())
    def repeat_command(
        self,
        node: int,
        previous: tuple[str, uuid.UUID, uuid.UUID, dict[str, Any]],
        other_payload: bool,
    ) -> None:
        tenant, agg, command_id, payload = previous
        if other_payload:  # a repeat is recognised by id alone
            payload = {"type": "Deposit", "amount": 1}
        self.submit(node, tenant, agg, command_id, payload)

    @rule(node=st.integers(0, 1), tenant=tenants, agg=aggregate_ids, back=st.integers(0, 50))
    def submit_old_command_id(self, node: int, tenant: str, agg: uuid.UUID, back: int) -> None:
        """A v7 id from the past: refused if the aggregate may have forgotten it."""
        old = uuid7_at(self.clock_ms - back, 10**6 + next(self.counter))
        self.submit(node, tenant, agg, old, {"type": "Deposit", "amount": 5})

    def submit_text(
        self, node: int, tenant: str, aggregate_id: str, command_id: str, payload_json: str
    ) -> None:
        """A request as text, through the real boundary (``command_from_request``) then
        the handler; the model decides from the same text."""
        parsed = boundary.request(aggregate_id, command_id, payload_json)
        accepted = parsed is not None
        text_payload = parsed[2] if parsed is not None else None
        admitted = accepted and self.admitted(node, tenant, TYPE, text_payload)
        if accepted and not admitted:
            want: Any = QuotaExceededError
        else:
            want = self.model.submit_request(tenant, TYPE, aggregate_id, command_id, payload_json)
        assert accepted or want is InvalidArgumentError
        request = pb.SubmitCommandRequest(
            command_id=command_id,
            aggregate_type=TYPE,
            aggregate_id=aggregate_id,
            payload_json=payload_json,
        )
        note(f"node {node}: text {payload_json[:80]!r} id={command_id!r} on {aggregate_id!r}")
        try:
            command = convert.command_from_request(
                request,
                tenant_id=self.world.tenant_prefix + tenant,
                context=RequestContext.new(),
                max_payload_bytes=1 << 20,
            )
        except AggregateError as exc:
            self.check(exc, want)
            return
        got = self.run(node, command)
        if admitted:
            self.finish(node, tenant, TYPE, text_payload)
        self.check(got, want)

    @rule(
        target=sent,
        node=st.integers(0, 1),
        tenant=tenants,
        agg=aggregate_ids,
        payload=commands,
        extra=extra_fields,
        id_spelling=spellings,
        command_spelling=spellings,
    )
    def submit_through_the_boundary(
        self,
        node: int,
        tenant: str,
        agg: uuid.UUID,
        payload: dict[str, Any],
        extra: str,
        id_spelling: str,
        command_spelling: str,
    ) -> tuple[str, uuid.UUID, uuid.UUID, dict[str, Any]]:
        """Ids in canonical form of either case name the same aggregate and command;
        every other spelling, and a payload past a bound, is refused and changes nothing."""
        command_id = self.fresh_id()
        text = json.dumps(payload)[:-1] + ', "x": ' + extra + "}"
        self.submit_text(
            node, tenant, spell(agg, id_spelling), spell(command_id, command_spelling), text
        )
        return (tenant, agg, command_id, payload)

    @rule(node=st.integers(0, 1), previous=sent)
    def repeat_in_upper_case(
        self, node: int, previous: tuple[str, uuid.UUID, uuid.UUID, dict[str, Any]]
    ) -> None:
        """A repeat whose ids are written in upper case is the same command."""
        tenant, agg, command_id, payload = previous
        self.submit_text(
            node, tenant, str(agg).upper(), str(command_id).upper(), json.dumps(payload)
        )

    @rule(node=st.integers(0, 1), tenant=tenants, agg=aggregate_ids)
    def submit_unknown_type(self, node: int, tenant: str, agg: uuid.UUID) -> None:
        self.submit(
            node, tenant, agg, self.fresh_id(), {"type": "Deposit", "amount": 1}, kind="nope"
        )

    @rule(tenant=tenants, agg=aggregate_ids, first=commands, second=commands)
    def concurrent_on_two_nodes(
        self, tenant: str, agg: uuid.UUID, first: dict[str, Any], second: dict[str, Any]
    ) -> None:
        """Both nodes write one aggregate at once (a placement flip): the results must match
        the model in one of the two orders."""
        key = self.key(tenant, agg)
        ids = [self.fresh_id(), self.fresh_id()]
        payloads = [first, second]
        results: list[Any] = [None, None]
        admitted = [self.admitted(i, tenant, TYPE, payloads[i]) for i in (0, 1)]

        async def both() -> None:
            async def one(i: int) -> None:
                try:
                    results[i] = await self.nodes[i].handle(
                        Command(key, ids[i], payloads[i], RequestContext.new())
                    )
                except AggregateError as exc:
                    results[i] = exc

            async with anyio.create_task_group() as tg:
                tg.start_soon(one, 0)
                tg.start_soon(one, 1)

        self.world.portal.call(both)
        for i in (0, 1):
            if admitted[i]:
                self.finish(i, tenant, TYPE, payloads[i])
        note(f"concurrent {payloads} -> {results} (admitted {admitted})")
        for order in ((0, 1), (1, 0)):
            trial = copy.deepcopy(self.model)
            wants: dict[int, Any] = {
                i: trial.submit((tenant, TYPE, agg), ids[i], payloads[i])
                if admitted[i]
                else QuotaExceededError
                for i in order
            }
            try:
                for i in (0, 1):
                    self.check(results[i], wants[i])
            except AssertionError:
                continue
            self.model = trial
            return
        raise AssertionError(f"no serial order explains {results}")

    def reload(self, rules: str) -> str:
        """Swap the type's programs in the registry and in the model at once (callable
        from the portal's thread: it makes no note). Returns the new version."""
        version = f"{rules}-{next(self.reloads)}"
        if rules == "capped":
            program: Any = FunctionProgram(TYPE, bank.decide_capped, bank.apply)
            decide: Any = bank.decide_capped
        else:
            program, decide = self.world.standard_program(), bank.decide
        spec = AggregateTypeSpec(TYPE, program, version=version, schemas=self.world.schemas)
        self.world.types().replace({TYPE: spec})
        schemas = self.world.model_schemas()
        self.model.reload(TYPE, ModelType(decide, bank.apply, version=version, schemas=schemas))
        return version

    @rule(rules=st.sampled_from(["standard", "capped"]))
    def reload_programs(self, rules: str) -> None:
        """A hot reload between commands: the next commands run the new version."""
        note(f"reload: {TYPE} now runs {self.reload(rules)}")

    @rule(
        node=st.integers(0, 1),
        tenant=tenants,
        agg=aggregate_ids,
        payload=commands,
        rules=st.sampled_from(["standard", "capped"]),
    )
    def reload_while_a_command_runs(
        self, node: int, tenant: str, agg: uuid.UUID, payload: dict[str, Any], rules: str
    ) -> None:
        """A reload lands while a command is in flight: the command finishes on the version
        it started with, the next ones run the new one."""
        command_id = self.fresh_id()
        admitted = self.admitted(node, tenant, TYPE, payload)
        want = (
            self.model.submit((tenant, TYPE, agg), command_id, payload)
            if admitted
            else QuotaExceededError
        )
        command = Command(self.key(tenant, agg), command_id, payload, RequestContext.new())
        registry = self.world.types()
        lookup = registry.get

        def look_up_then_reload(name: str) -> AggregateTypeSpec:
            spec = lookup(name)  # the command holds these programs from now on
            del registry.get  # type: ignore[method-assign]
            self.reload(rules)
            return spec

        registry.get = look_up_then_reload  # type: ignore[method-assign]
        note(f"node {node}: {payload} id={command_id}, {rules} programs reloaded once it started")
        try:
            got = self.run(node, command)
        finally:
            vars(registry).pop("get", None)
        if admitted:
            self.finish(node, tenant, TYPE, payload)
        self.check(got, want)

    @rule(node=st.integers(0, 1))
    def restart_node(self, node: int) -> None:
        """A new handler rebuilt from the store and the snapshots."""
        for tenant in self.model.activity:
            counted = self._activity(self.nodes[node], tenant)
            self.retired_activity[tenant] = self.retired_activity.get(tenant, 0) + counted
        for _, admission in self.held[node]:
            admission.__exit__(None, None, None)
        self.held[node] = []
        self.protections[node] = self.new_protection()
        self.quotas[node] = QuotaModel(dict(QUOTAS))
        self.nodes[node] = self.world.new_handler(self.protections[node])

    @rule()
    def delete_snapshots(self) -> None:
        self.world.snapshots.clear()

    @precondition(lambda self: self.world.supports_faults)
    @rule(target=sent, node=st.integers(0, 1), tenant=tenants, agg=aggregate_ids, payload=commands)
    def lost_acknowledgement(
        self, node: int, tenant: str, agg: uuid.UUID, payload: dict[str, Any]
    ) -> Any:
        """The append lands but its answer is lost: the client sees UNAVAILABLE, and a retry
        with the same id must answer the stored result, never append again."""
        trial = copy.deepcopy(self.model)
        command_id = self.fresh_id()
        want = trial.submit((tenant, TYPE, agg), command_id, payload)
        if not (isinstance(want, ModelResult) and want.events and not want.duplicate):
            return multiple()
        if not self.quotas[node].admits(tenant):
            return multiple()
        self.admitted(node, tenant)
        self.world.store.lose_next_ack()  # type: ignore[attr-defined]
        got = self.run(
            node, Command(self.key(tenant, agg), command_id, payload, RequestContext.new())
        )
        self.finish(node, tenant)
        note(f"lost ack: {payload} -> {got!r}")
        assert isinstance(got, BackendUnavailableError)
        self.model = trial
        return (tenant, agg, command_id, payload)

    @precondition(lambda self: self.world.supports_faults)
    @rule(node=st.integers(0, 1), tenant=tenants, agg=aggregate_ids, payload=commands)
    def retried_publish_answered_as_conflict(
        self, node: int, tenant: str, agg: uuid.UUID, payload: dict[str, Any]
    ) -> None:
        """JetStream answers a retried publish whose first attempt landed with a conflict;
        the handler must find its own append and answer it as a first application."""
        trial = copy.deepcopy(self.model)
        want = trial.submit((tenant, TYPE, agg), self.fresh_id(), payload)
        if not (isinstance(want, ModelResult) and want.events):
            return
        if not self.quotas[node].admits(tenant):
            return
        self.world.store.conflict_next_ack()  # type: ignore[attr-defined]
        self.submit(node, tenant, agg, self.fresh_id(), payload)

    def _activity(self, handler: CommandHandler, tenant: str) -> int:
        tracker = handler.activity
        assert isinstance(tracker, ActivityTracker)
        return tracker.of(self.world.tenant_prefix + tenant).commands_total

    @rule(quarters=st.integers(1, 12))
    def time_passes(self, quarters: int) -> None:
        """The quotas' clock moves on: buckets refill."""
        self.quota_now += quarters / 4
        for quotas in self.quotas:
            quotas.advance(Fraction(quarters, 4))

    @rule(node=st.integers(0, 1), tenant=tenants)
    def command_in_flight(self, node: int, tenant: str) -> None:
        """A command of ``tenant`` is admitted and stays in flight (its admission is held
        open), or is refused: as the model says."""
        want = self.quotas[node].admit(tenant)
        try:
            admission = self.protections[node].admit(self.world.tenant_prefix + tenant)
            admission.__enter__()
        except QuotaExceededError:
            got = False
        else:
            got = True
            self.held[node].append((tenant, admission))
        note(f"node {node}: {tenant} in flight: admitted {got}, model {want}")
        assert got == want

    @rule(node=st.integers(0, 1), tenant=tenants, calls=st.integers(1, 4))
    def early_checks(self, node: int, tenant: str, calls: int) -> None:
        """The headers of ``calls`` calls arrive together (one read): the transport's early
        check passes each (holding a promise of the tenant's token and slot) or refuses
        it, as the model says."""
        for _ in range(calls):
            want = self.quotas[node].early_check(tenant)
            try:
                self.protections[node].check(self.world.tenant_prefix + tenant, promise=True)
            except QuotaExceededError:
                got = False
            else:
                got = True
            note(f"node {node}: {tenant} early check: passed {got}, model {want}")
            assert got == want

    @rule(node=st.integers(0, 1), tenant=tenants)
    def promise_released(self, node: int, tenant: str) -> None:
        """A call that passed the early check comes to its admission (or ends)."""
        self.quotas[node].release(tenant)
        self.protections[node].release(self.world.tenant_prefix + tenant)

    @precondition(lambda self: any(self.held))
    @rule(node=st.integers(0, 1))
    def command_in_flight_finishes(self, node: int) -> None:
        if not self.held[node]:
            return
        tenant, admission = self.held[node].pop(0)
        admission.__exit__(None, None, None)
        self.quotas[node].finish(tenant)

    # ---- invariants -----------------------------------------------------------------
    @invariant()
    def every_command_that_ran_is_counted_once_for_its_tenant(self) -> None:
        for tenant, want in self.model.activity.items():
            live = sum(self._activity(handler, tenant) for handler in self.nodes)
            got = self.retired_activity.get(tenant, 0) + live
            assert got == want, f"{tenant}: handlers counted {got} commands, model {want}"

    @invariant()
    def cached_counts_per_tenant_are_exact(self) -> None:
        for handler in self.nodes:
            cache = handler.cache
            recount: dict[str, int] = {}
            for key in cache._items:
                recount[key.tenant_id] = recount.get(key.tenant_id, 0) + 1
            for tenant in {*recount, *(self.world.tenant_prefix + t for t in self.model.activity)}:
                assert cache.tenant_count(tenant) == recount.get(tenant, 0), tenant

    @invariant()
    def quotas_match_the_model(self) -> None:
        for node in (0, 1):
            for tenant in QUOTAS:
                status = self.protections[node].status(self.world.tenant_prefix + tenant)
                model = self.quotas[node]
                assert status.tokens == model.tokens(tenant), (node, tenant)
                assert status.in_flight == model.usage.get(tenant, _IDLE).in_flight

    @invariant()
    def every_aggregate_matches_the_model(self) -> None:
        for (tenant, kind, agg), _ in list(self.model.aggregates.items()):
            want = self.model.view((tenant, kind, agg))
            key = self.key(tenant, agg, kind)
            for handler in self.nodes:
                try:
                    view = self.world.portal.call(handler.get, key)
                    got = (view.version, view.state)
                except AggregateNotFoundError:
                    got = None
                assert got == want, f"{key}: handler has {got}, model has {want}"

    @invariant()
    def stream_holds_each_command_once_with_contiguous_versions(self) -> None:
        for (tenant, kind, agg), model_agg in self.model.aggregates.items():
            key = self.key(tenant, agg, kind)
            stored = self.world.portal.call(self.world.store.read, key)
            ids = [item.record.command_id for item in stored]
            assert len(ids) == len(set(ids)), f"{key}: a command id is stored twice"
            events = [e for item in stored for e in item.record.events]
            assert [e.version for e in events] == list(range(1, len(events) + 1))
            assert [(e.version, e.event_type, e.payload) for e in events] == [
                (e.version, e.event_type, e.payload) for e in model_agg.log
            ]
            assert ids == model_agg.applied

    @invariant()
    def every_message_names_the_version_that_decided_it(self) -> None:
        store = self.world.store
        if not isinstance(store, InMemoryEventStore):
            return  # the JetStream store's reads return records, not headers
        decided_by = {}
        for (tenant, kind, agg), model_agg in self.model.aggregates.items():
            subject = self.key(tenant, agg, kind).subject
            for command_id, version in model_agg.decided_by.items():
                decided_by[(subject, str(command_id))] = version
        for message in store.messages:
            where = (message.subject, message.headers["command-id"])
            assert message.headers["program-version"] == decided_by[where], where


def bank_manifest_type() -> Any:
    from aggregate.config import example_manifest_path, load_manifest

    return load_manifest(example_manifest_path("bank")).types[TYPE]


class SlowAckStore(InMemoryEventStore):
    """The in-memory store, with the acknowledgement of the next appends delayed by
    ``ack_delays`` (seconds, one per append): answers come back out of position order."""

    ack_delays: list[float]

    def __init__(self) -> None:
        super().__init__()
        self.ack_delays = []

    async def append(self, record: Any, *, expected_last_seq: int, context: Any) -> int:
        seq = await super().append(record, expected_last_seq=expected_last_seq, context=context)
        if self.ack_delays:
            await anyio.sleep(self.ack_delays.pop())
        return seq


def memory_world_factory(
    backend: str = "trio", program: str = "function", *, schemas: bool = False
) -> Any:
    """Worlds on the in-memory store. ``program``: ``function`` (the model's own rules),
    ``starlark-inline`` or ``starlark-process`` (the bundled Starlark bank example, so the
    model also checks the example program). ``schemas``: the bank example's command
    schemas guard the type (the model checks them with another validator)."""
    from aggregate.programs.pool import WorkerPool
    from aggregate.programs.starlark_program import StarlarkInlineProgram, StarlarkProcessProgram

    def make() -> World:
        stack = contextlib.ExitStack()
        portal = stack.enter_context(anyio.from_thread.start_blocking_portal(backend))
        world = World(portal=portal, store=SlowAckStore(), supports_faults=True)
        world.close = stack.close  # type: ignore[method-assign]
        if schemas:
            world.schemas = bank_manifest_type().schemas
        if program != "function":
            spec = bank_manifest_type()
            if program == "starlark-inline":
                world.program = StarlarkInlineProgram(TYPE, spec.decide, spec.apply)
            else:
                pool = stack.enter_context(portal.wrap_async_context_manager(WorkerPool()))
                world.program = StarlarkProcessProgram(TYPE, spec.decide, spec.apply, pool)
        return world

    return make
