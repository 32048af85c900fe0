"""Circuit breakers, driven by a fake clock; and the stores behind them."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from aggregate.application.breaker import BreakerSettings, BreakerState, CircuitBreaker
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.application.protected import BreakerEventStore, BreakerSnapshotStore
from aggregate.application.quota import Protection
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import Command
from aggregate.domain.errors import (
    BackendUnavailableError,
    CircuitOpenError,
    VersionConflictError,
)
from aggregate.domain.ids import AggregateKey, uuid7
from aggregate.domain.status import retry_after_ms_of, status_of
from aggregate.programs.base import AggregateTypeSpec
from aggregate.testing.memory_snapshots import InMemorySnapshotStore
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram, StaticTypes
from specs import bank

TYPE = "bank-account"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, threshold: int = 3, open_s: float = 1.0, **kw: Any) -> CircuitBreaker:
    return CircuitBreaker("event_store", BreakerSettings(threshold, open_s), clock=clock, **kw)


def fail(b: CircuitBreaker, exc: BaseException | None = None) -> None:
    with pytest.raises(type(exc) if exc else BackendUnavailableError), b.guard():
        raise exc or BackendUnavailableError("nats: no servers available")


def succeed(b: CircuitBreaker) -> None:
    with b.guard():
        pass


def test_consecutive_failures_open_it_and_an_open_breaker_refuses_at_once() -> None:
    clock = Clock()
    moves: list[tuple[str, BreakerState, BreakerState]] = []
    b = breaker(clock, on_transition=lambda *m: moves.append(m))
    fail(b)
    fail(b)
    assert b.state is BreakerState.CLOSED
    fail(b)
    assert b.state is BreakerState.OPEN
    ran = False
    clock.now += 0.25
    with pytest.raises(CircuitOpenError) as info, b.guard():
        ran = True
    assert not ran
    assert (info.value.breaker, info.value.retry_after_ms) == ("event_store", 750)
    assert status_of(info.value) == ("UNAVAILABLE", 503)
    assert retry_after_ms_of(info.value) == 750
    assert "retry with the same command id after 750 ms" in info.value.message
    assert "no servers available" in info.value.message
    assert moves == [("event_store", BreakerState.CLOSED, BreakerState.OPEN)]


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    b = breaker(Clock())
    fail(b)
    fail(b)
    succeed(b)
    fail(b)
    fail(b)
    assert b.state is BreakerState.CLOSED
    assert b.status().consecutive_failures == 2


def test_business_errors_are_the_backend_answering() -> None:
    b = breaker(Clock(), threshold=1)
    with pytest.raises(VersionConflictError), b.guard():
        raise VersionConflictError("stale")
    assert b.state is BreakerState.CLOSED


def test_timeouts_count_and_cancellation_does_not() -> None:
    b = breaker(Clock(), threshold=2)
    fail(b, TimeoutError())
    with pytest.raises(KeyboardInterrupt), b.guard():
        raise KeyboardInterrupt
    assert b.state is BreakerState.CLOSED
    fail(b, TimeoutError())
    assert b.state is BreakerState.OPEN


def test_half_open_lets_one_probe_through_and_its_success_closes_it() -> None:
    clock = Clock()
    moves: list[BreakerState] = []
    b = breaker(clock, threshold=1, on_transition=lambda _n, _o, new: moves.append(new))
    fail(b)
    clock.now += 1.0
    assert b.state is BreakerState.HALF_OPEN
    with b.guard():  # the probe
        with pytest.raises(CircuitOpenError) as second, b.guard():
            pass
        with pytest.raises(CircuitOpenError):
            b.check()
    assert second.value.retry_after_ms == 1
    assert b.state is BreakerState.CLOSED
    b.check()
    assert moves == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_a_failed_probe_opens_it_again_for_a_full_period() -> None:
    clock = Clock()
    b = breaker(clock, threshold=3)
    for _ in range(3):
        fail(b)
    clock.now += 1.5
    fail(b)  # the probe
    assert b.state is BreakerState.OPEN
    assert b.status().retry_after_ms == 1000
    clock.now += 0.999
    assert b.state is BreakerState.OPEN
    clock.now += 0.001
    assert b.state is BreakerState.HALF_OPEN


def test_a_cancelled_probe_frees_its_slot() -> None:
    clock = Clock()
    b = breaker(clock, threshold=1)
    fail(b)
    clock.now += 1
    with pytest.raises(KeyboardInterrupt), b.guard():
        raise KeyboardInterrupt
    assert b.state is BreakerState.HALF_OPEN
    succeed(b)
    assert b.state is BreakerState.CLOSED


def test_status_names_the_breaker_and_why() -> None:
    clock = Clock()
    b = breaker(clock, threshold=1)
    assert b.status().as_dict() == {
        "name": "event_store",
        "state": "closed",
        "consecutive_failures": 0,
        "reason": None,
        "retry_after_ms": 0,
    }
    fail(b)
    assert b.status().as_dict() == {
        "name": "event_store",
        "state": "open",
        "consecutive_failures": 1,
        "reason": "BackendUnavailableError: nats: no servers available",
        "retry_after_ms": 1000,
    }


# --- the stores behind breakers, and the handler -----------------------------------------


def make_handler(store: InMemoryEventStore, b: CircuitBreaker) -> CommandHandler:
    types = StaticTypes(
        {TYPE: AggregateTypeSpec(TYPE, FunctionProgram(TYPE, bank.decide, bank.apply))}
    )
    return CommandHandler(
        store=BreakerEventStore(store, b),
        types=types,
        protection=Protection(breakers=(b,)),
        settings=HandlerSettings(retry_backoff_s=0),
    )


def open_account(key: AggregateKey, command_id: uuid.UUID | None = None) -> Command:
    return Command(
        key, command_id or uuid7(), {"type": "OpenAccount", "owner": "ann"}, RequestContext.new()
    )


@pytest.mark.trio
async def test_an_open_breaker_fails_commands_before_the_store_and_a_retry_is_safe() -> None:
    clock = Clock()
    b = breaker(clock, threshold=1)  # (each command's load reads successfully first)
    store = InMemoryEventStore()
    h = make_handler(store, b)
    key = AggregateKey("acme", TYPE, uuid7())
    same = uuid7()
    store.fail_next_append(1)
    with pytest.raises(BackendUnavailableError):
        await h.handle(open_account(key, same))
    assert b.state is BreakerState.OPEN
    reads_before = store.appends
    with pytest.raises(CircuitOpenError):
        await h.handle(open_account(key, same))
    assert store.appends == reads_before == 0
    clock.now += 1
    result = await h.handle(open_account(key, same))  # the probe, same command id
    assert (result.version, result.duplicate) == (1, False)
    assert b.state is BreakerState.CLOSED
    again = await h.handle(open_account(key, same))
    assert (again.version, again.duplicate) == (1, True)


@pytest.mark.trio
async def test_an_open_snapshot_breaker_skips_snapshots_and_commands_go_on() -> None:
    clock = Clock()
    b = CircuitBreaker("snapshot_store", BreakerSettings(1, 1.0), clock=clock)
    inner = InMemorySnapshotStore()
    snapshots = BreakerSnapshotStore(inner, b)
    store = InMemoryEventStore()
    h = make_handler(store, breaker(clock))
    key = AggregateKey("acme", TYPE, uuid7())
    await h.handle(open_account(key))
    instance = h.cache.get(key)
    assert instance is not None
    assert await snapshots.save(instance.snapshot())
    with pytest.raises(BackendUnavailableError), b.guard():
        raise BackendUnavailableError("disk I/O error")
    assert await snapshots.load(key) is None  # open: not read, the events are the truth
    assert not await snapshots.save(instance.snapshot())
    clock.now += 1
    loaded = await snapshots.load(key)
    assert loaded is not None
    assert loaded.version == 1
    assert b.state is BreakerState.CLOSED
