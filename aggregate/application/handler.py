"""The command handler: load, de-duplicate, decide, append conditionally, retry (DESIGN §1).

Written with anyio against the ports in ``aggregate.application.ports``: it runs on the
asyncio island in the service and under Trio in tests. Commands for one aggregate are
serialized by a per-key lock; the conditional append makes a stale cache harmless (a
conflict reloads the aggregate's new records and decides again).

With a tracer (tracing on), the steps are spans under the span current when ``handle`` or
``get`` is called (the command's or the read's): ``load`` on a cache miss, ``decide``,
``apply`` when stored events are replayed, ``append``; the ids go on that current span.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio
from opentelemetry import trace

from aggregate.application.activity import NoActivityTracker
from aggregate.application.cache import AggregateCache, KeyedLocks
from aggregate.application.changes import open_append
from aggregate.domain.aggregate import AggregateInstance, program_events
from aggregate.domain.envelopes import AggregateView, CommandResult, Event
from aggregate.domain.errors import (
    AggregateNotFoundError,
    BackendUnavailableError,
    CommandIdTooOldError,
    CommandRejectedError,
    CorruptDataError,
    DuplicateAppendError,
    ExpectedVersionMismatchError,
    UnknownAggregateTypeError,
    VersionConflictError,
)
from aggregate.programs.base import Rejected

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Sequence
    from contextlib import AbstractContextManager

    from opentelemetry.trace import Tracer

    from aggregate.application.activity import ActivityTracker
    from aggregate.application.ports import (
        ChangeSink,
        EventStore,
        SnapshotSink,
        SnapshotStore,
        TenantGate,
    )
    from aggregate.domain.envelopes import Command, StoredRecord
    from aggregate.domain.history import HistoryEntry
    from aggregate.domain.ids import AggregateKey
    from aggregate.programs.base import AggregateTypeSpec

log = logging.getLogger(__name__)

# Business outcomes: the cached aggregate is still exactly what the store holds.
_KEEPS_CACHE = (CommandRejectedError, ExpectedVersionMismatchError, CommandIdTooOldError)
_NO_SPAN = contextlib.nullcontext()


@dataclass(frozen=True, slots=True)
class HandlerSettings:
    """Tuning of the handler; the service builds it from ``Settings``."""

    max_retries: int = 3
    snapshot_threshold: int = 10
    history_limit: int = 1000
    cache_size: int = 10_000
    retry_backoff_s: float = 0.005
    retry_backoff_max_s: float = 0.2


def _describe_span(key: AggregateKey, command_id: uuid.UUID | None = None) -> None:
    """Put the aggregate (and command) ids on the current span: the command's or read's."""
    attributes = {
        "aggregate.tenant_id": key.tenant_id,
        "aggregate.type": key.aggregate_type,
        "aggregate.id": str(key.aggregate_id),
    }
    if command_id is not None:
        attributes["aggregate.command_id"] = str(command_id)
    trace.get_current_span().set_attributes(attributes)


class HandlerObserver(Protocol):
    """Hooks for metrics; every method must be cheap and must not raise."""

    def conflict(self, key: AggregateKey) -> None: ...

    def rehydrated(self, key: AggregateKey, seconds: float, events: int) -> None: ...


class _NoObserver:
    def conflict(self, key: AggregateKey) -> None:
        pass

    def rehydrated(self, key: AggregateKey, seconds: float, events: int) -> None:
        pass


class TypeLookup(Protocol):
    def get(self, name: str) -> AggregateTypeSpec:
        """The configured type. Raises: UnknownAggregateTypeError."""
        ...


class _OpenGate:
    def admit(self, tenant_id: str) -> AbstractContextManager[None]:
        return contextlib.nullcontext()


class CommandHandler:
    """Handles commands and reads for every aggregate this node hosts."""

    def __init__(
        self,
        *,
        store: EventStore,
        types: TypeLookup,
        snapshots: SnapshotStore | None = None,
        snapshot_sink: SnapshotSink | None = None,
        change_sink: ChangeSink | None = None,
        gate: TenantGate | None = None,
        protection: TenantGate | None = None,
        settings: HandlerSettings | None = None,
        observer: HandlerObserver | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.perf_counter,
        tracer: Tracer | None = None,
        activity: ActivityTracker | None = None,
    ) -> None:
        self.store = store
        self.types = types
        self.snapshots = snapshots
        self.snapshot_sink = snapshot_sink
        self.change_sink = change_sink
        self.gate: TenantGate = gate or _OpenGate()
        self.protection: TenantGate = protection or _OpenGate()
        """Breakers and quotas (``aggregate.application.quota.Protection``), after the gate."""
        self.settings = settings or HandlerSettings()
        self.observer: HandlerObserver = observer or _NoObserver()
        self.cache = AggregateCache(self.settings.cache_size)
        self.locks = KeyedLocks()
        self._rng = rng or random.Random()
        self._clock = clock
        self._tracer = tracer
        self.activity: ActivityTracker | NoActivityTracker = (
            activity if activity is not None else NoActivityTracker()
        )
        """Counts the commands the gate admitted, per tenant (the admin views)."""
        self._unsnapshotted: set[str] = set()
        self._no_snapshots = False

    def _span(self, name: str) -> AbstractContextManager[object]:
        """A child span of the current one (tracing on), else nothing."""
        if self._tracer is None:
            return _NO_SPAN
        return self._tracer.start_as_current_span(name)

    def precheck(self, tenant_id: str) -> None:
        """Refuse at once a command that protection would refuse now (open breaker, tenant
        over quota), before the transport decodes it; spends nothing. ``handle`` decides
        again: this is only a cheap early answer.

        Raises:
            CircuitOpenError, QuotaExceededError: as ``handle``.
        """
        check = getattr(self.protection, "check", None)
        if check is not None:
            check(tenant_id)

    def precheck_promised(self, tenant_id: str) -> None:
        """``precheck`` for a call whose command comes later: a call that passes holds a
        promise of its token and in-flight slot, which later prechecks count, until
        ``release`` (``aggregate.application.quota.Protection.check``).

        Raises:
            CircuitOpenError, QuotaExceededError: as ``handle``.
        """
        check = getattr(self.protection, "check", None)
        if check is not None:
            check(tenant_id, promise=True)

    def release(self, tenant_id: str) -> None:
        """The call that passed ``precheck_promised`` is about to be handled, or ends."""
        release = getattr(self.protection, "release", None)
        if release is not None:
            release(tenant_id)

    async def handle(self, command: Command) -> CommandResult:
        """Run one command to completion.

        Raises:
            UnknownAggregateTypeError: the type is not configured.
            InvalidArgumentError: the payload does not match its command type's schema
                (checked first: nothing is loaded, decided or stored).
            TenantUnavailableError, TenantAccessDeniedError: the gate refused the tenant, or
                stored data names another tenant.
            CircuitOpenError: a breaker of the command path is open; nothing was attempted.
            QuotaExceededError: the tenant is over its quota; nothing was attempted.
            CommandIdTooOldError: a v7 command id older than the de-duplication horizon.
            ExpectedVersionMismatchError: ``expected_version`` is set and differs.
            CommandRejectedError: ``decide`` rejected the command.
            VersionConflictError: still conflicting after ``max_retries`` retries.
            ProgramError, ProgramLimitError: the program crashed or ran out of budget.
            BackendUnavailableError: the event store could not be reached; the command may
                or may not have been appended (a retry with the same id is safe).

        Cancellation: the command may or may not have been appended; the cached aggregate
        is dropped so the next command reloads it.
        """
        key = command.key
        if self._tracer is not None:
            _describe_span(key, command.command_id)
        spec = self.types.get(key.aggregate_type)
        if spec.schemas is not None:
            spec.schemas.validate(command.payload)
        with (
            self.gate.admit(key.tenant_id),
            self.protection.admit(key.tenant_id),
            self.activity.track(key.tenant_id),
        ):
            async with self.locks.hold(key):
                try:
                    return await self._handle_locked(command, spec)
                except _KEEPS_CACHE:
                    raise
                except BaseException:
                    self.cache.discard(key)
                    raise
                finally:
                    if not self._is_current(spec, key.aggregate_type):
                        # Programs were reloaded meanwhile: the next command loads the
                        # aggregate afresh (with the new apply when its cache was rebuilt).
                        self.cache.discard(key)

    async def _handle_locked(self, command: Command, spec: AggregateTypeSpec) -> CommandResult:
        key = command.key
        instance = await self._load(key, spec)
        self.cache.put(instance)
        attempted: Event | None = None
        for attempt in range(self.settings.max_retries + 1):
            entry = instance.lookup(command.command_id)
            if entry is not None:
                return await self._replay(key, entry, attempted)
            expected = command.expected_version
            if expected is not None and expected != instance.version:
                raise ExpectedVersionMismatchError(
                    f"{key} is at version {instance.version}, not the expected version {expected}",
                    expected=expected,
                    actual=instance.version,
                )
            with self._span("decide"):
                decision = await spec.program.decide(instance.state, command.payload)
            if isinstance(decision, Rejected):
                raise CommandRejectedError(decision.reason)
            if not decision.events:
                return CommandResult(
                    key, command.command_id, instance.version, (), position=instance.last_seq
                )
            record = instance.record_for(
                command.command_id,
                decision.events,
                correlation_id=command.context.correlation_id,
                trace_id=command.context.trace_id,
                program_version=spec.version,
            )
            attempted = record.events[0]
            previous = instance.last_seq
            conflicted = False
            with open_append(self.change_sink, key.tenant_id) as append:
                try:
                    with self._span("append"):
                        seq = await self.store.append(
                            record, expected_last_seq=previous, context=command.context
                        )
                except DuplicateAppendError as duplicate:
                    stored = await self._stored_command(key, command.command_id, duplicate.seq)
                    if stored.record.events[0].event_id == record.events[0].event_id:
                        # Our own append, landed on an earlier attempt of the store's retry.
                        instance.accept(stored.seq, stored.record, decision.state)
                        append.committed(instance, previous, record)
                        self._maybe_snapshot(instance, spec)
                        return CommandResult(
                            key,
                            command.command_id,
                            instance.version,
                            record.events,
                            position=stored.seq,
                        )
                    # A repeat of a command this aggregate no longer remembers (a non-v7 id
                    # beyond the history) that the store's duplicate window still knows:
                    # answer the stored result, never apply it twice.
                    append.settled = True
                    original = stored.record
                    return CommandResult(
                        key,
                        command.command_id,
                        original.last_version,
                        original.events,
                        True,
                        position=stored.seq,
                    )
                except VersionConflictError:
                    # Uncertain: the answer to a retried publish whose first attempt landed.
                    conflicted = True
                else:
                    instance.accept(seq, record, decision.state)
                    append.committed(instance, previous, record)
            if conflicted:
                self.observer.conflict(key)
                await self._catch_up(instance, spec)
                if attempt < self.settings.max_retries:
                    await self._backoff(attempt)
                continue
            self._maybe_snapshot(instance, spec)
            return CommandResult(
                key, command.command_id, instance.version, record.events, position=seq
            )
        # The last conflict may have been our own append landing (a retried publish).
        entry = instance.lookup(command.command_id)
        if entry is not None:
            return await self._replay(key, entry, attempted)
        raise VersionConflictError(
            f"{key}: version conflict persisted after {self.settings.max_retries} retries; "
            "another writer keeps changing this aggregate, retry the command later"
        )

    async def get(self, key: AggregateKey) -> AggregateView:
        """The aggregate's current state and version, caught up with the store.

        Raises:
            UnknownAggregateTypeError: the type is not configured.
            AggregateNotFoundError: the aggregate has no events.
            TenantUnavailableError, TenantAccessDeniedError: as ``handle``.
        """
        if self._tracer is not None:
            _describe_span(key)
        spec = self.types.get(key.aggregate_type)
        with self.gate.admit(key.tenant_id):
            async with self.locks.hold(key):
                try:
                    instance = self.cache.get(key)
                    if instance is None:
                        instance = await self._rehydrate(key, spec)
                    else:
                        await self._catch_up(instance, spec)
                    self.cache.put(instance)
                except BaseException:
                    self.cache.discard(key)
                    raise
        if instance.version == 0:
            raise AggregateNotFoundError(f"aggregate {key} not found")
        return instance.view()

    async def events(self, key: AggregateKey, *, after_version: int = 0) -> list[Event]:
        """The aggregate's events with a version above ``after_version``, in order.

        Raises:
            TenantUnavailableError, TenantAccessDeniedError: as ``handle``.
        """
        self.types.get(key.aggregate_type)
        with self.gate.admit(key.tenant_id):
            records = await self.store.read(key)
        return [e for r in records for e in r.record.events if e.version > after_version]

    def ignore_snapshots(self, aggregate_types: list[str] | None, ignore: bool) -> None:
        """Load the given types (None: every type) from their events alone while
        ``ignore`` holds: their snapshots were folded by an ``apply`` a reload replaced
        and are being deleted (a rebuild)."""
        if aggregate_types is None:
            self._no_snapshots = ignore
        elif ignore:
            self._unsnapshotted.update(aggregate_types)
        else:
            self._unsnapshotted.difference_update(aggregate_types)

    def forget_tenant(self, tenant_id: str) -> int:
        """Drop a tenant's cached aggregates (it moved away). Returns how many."""
        return self.cache.discard_tenant(tenant_id)

    async def _load(self, key: AggregateKey, spec: AggregateTypeSpec) -> AggregateInstance:
        instance = self.cache.get(key)
        if instance is None:
            instance = await self._rehydrate(key, spec)
        return instance

    async def _rehydrate(self, key: AggregateKey, spec: AggregateTypeSpec) -> AggregateInstance:
        with self._span("load"):
            instance = await self._rebuild(key, spec)
        self._maybe_snapshot(instance, spec)
        return instance

    async def _rebuild(self, key: AggregateKey, spec: AggregateTypeSpec) -> AggregateInstance:
        started = self._clock()
        limit = self.settings.history_limit
        instance: AggregateInstance | None = None
        events = 0
        if self.snapshots is not None and not (
            self._no_snapshots or key.aggregate_type in self._unsnapshotted
        ):
            snapshot = await self.snapshots.load(key)
            if snapshot is not None:
                try:
                    instance = AggregateInstance.from_snapshot(
                        snapshot, key=key, history_limit=limit
                    )
                    events = await self._catch_up(instance, spec)
                except CorruptDataError as exc:
                    log.warning("snapshot of %s is unusable (%s); replaying in full", key, exc)
                    instance = None
        if instance is None:
            instance = AggregateInstance.new(key, spec.initial_state, history_limit=limit)
            events = await self._catch_up(instance, spec)
        self.observer.rehydrated(key, self._clock() - started, events)
        return instance

    async def _catch_up(self, instance: AggregateInstance, spec: AggregateTypeSpec) -> int:
        """Apply the records stored after the instance's sequence. Returns the event count."""
        stored: Sequence[StoredRecord] = await self.store.read(
            instance.key, after_seq=instance.last_seq
        )
        if not stored:
            return 0
        events = [e for item in stored for e in program_events(item.record.events)]
        with self._span("apply"):
            state = await spec.program.apply(instance.state, events)
        instance.advance(stored, state)
        return len(events)

    async def _replay(
        self, key: AggregateKey, entry: HistoryEntry, attempted: Event | None
    ) -> CommandResult:
        """The original result of a remembered command. When ``attempted`` (the first event
        this handler tried to append for it) is what is stored, our own append landed although
        its answer was a conflict (DESIGN §4.3): that is the first application, not a repeat."""
        stored = await self._stored_command(key, entry.command_id, entry.stream_seq)
        events = stored.record.events
        duplicate = attempted is None or events[0].event_id != attempted.event_id
        return CommandResult(
            key, entry.command_id, entry.last_version, events, duplicate, position=stored.seq
        )

    async def _stored_command(
        self, key: AggregateKey, command_id: uuid.UUID, seq: int
    ) -> StoredRecord:
        """The message of ``command_id`` at ``seq`` (remembered in the history, or named
        by the store's duplicate report).

        Raises:
            BackendUnavailableError: nothing readable there yet (a lagging read replica).
            CorruptDataError: another command's message is there.
        """
        stored = await self.store.read_at(key, seq)
        if stored is None:
            raise BackendUnavailableError(
                f"{key}: command {command_id} is stored at sequence {seq} but not readable "
                "yet; retry with the same command id"
            )
        if stored.record.command_id != command_id:
            raise CorruptDataError(
                f"{key}: command {command_id} should be at stream sequence {seq}, which "
                "holds another command's message"
            )
        return stored

    def _is_current(self, spec: AggregateTypeSpec, name: str) -> bool:
        """Whether ``spec`` still serves type ``name`` (no program reload since it was
        looked up)."""
        try:
            return self.types.get(name) is spec
        except UnknownAggregateTypeError:
            return False

    def _maybe_snapshot(self, instance: AggregateInstance, spec: AggregateTypeSpec) -> None:
        threshold = self.settings.snapshot_threshold
        if self.snapshot_sink is None or threshold <= 0:
            return
        if not self._is_current(spec, instance.key.aggregate_type):
            # Decided by programs a reload replaced: a rebuild may have dropped this
            # type's snapshots, which a state folded by the old apply must not refill.
            return
        if instance.events_since_snapshot >= threshold:
            self.snapshot_sink.offer(instance.snapshot())
            instance.events_since_snapshot = 0

    async def _backoff(self, attempt: int) -> None:
        base = self.settings.retry_backoff_s
        if base <= 0:
            await anyio.lowlevel.checkpoint()
            return
        ceiling = min(self.settings.retry_backoff_max_s, base * (2**attempt))
        await anyio.sleep(ceiling * (0.5 + self._rng.random() / 2))
