"""The per-tenant admin views: activity counts, cached counts, paging, snapshot counts."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregate.adapters.sqlite_snapshot_file import count_by_tenant_sql
from aggregate.adapters.sqlite_snapshots import SqliteSnapshotStore
from aggregate.application import tenant_views
from aggregate.application.activity import ActivityTracker, TenantActivity, rfc3339_utc
from aggregate.application.admin import (
    DEFAULT_TENANT_PAGE,
    MAX_TENANT_PAGE,
    TenantPage,
    parse_tenant_page,
)
from aggregate.application.cache import AggregateCache
from aggregate.application.gate import TenantGate
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.domain.aggregate import AggregateInstance, Snapshot
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import Command
from aggregate.domain.errors import (
    CommandRejectedError,
    InvalidArgumentError,
    TenantUnavailableError,
)
from aggregate.domain.history import CommandHistory, FrozenHistory
from aggregate.domain.ids import AggregateKey, uuid7
from aggregate.domain.placement import PlacementDecision, validate_placement
from aggregate.programs.base import AggregateTypeSpec
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram, StaticTypes
from specs import bank

TYPE = "bank-account"


class Clock:
    def __init__(self, now: float = 1_767_323_045.678) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- activity tracker -------------------------------------------------------------------


def test_rfc3339_utc_has_milliseconds_and_z() -> None:
    assert rfc3339_utc(1_767_323_045.678) == "2026-01-02T03:04:05.678Z"
    assert rfc3339_utc(0) == "1970-01-01T00:00:00.000Z"


def test_activity_counts_every_ending_and_keeps_the_last_time() -> None:
    clock = Clock()
    tracker = ActivityTracker(clock=clock)
    assert tracker.of("acme") == TenantActivity(0, None)
    with tracker.track("acme"):
        pass
    clock.now += 1.5
    with pytest.raises(CommandRejectedError), tracker.track("acme"):
        raise CommandRejectedError("insufficient funds")
    assert tracker.of("acme") == TenantActivity(2, "2026-01-02T03:04:07.178Z")
    assert tracker.of("globex") == TenantActivity(0, None)
    clock.now += 60
    with tracker.track("acme"):
        pass
    assert tracker.of("acme") == TenantActivity(3, "2026-01-02T03:05:07.178Z")  # not stale


def test_activity_forgets_the_longest_idle_tenant_past_its_bound() -> None:
    clock = Clock()
    tracker = ActivityTracker(max_tenants=2, clock=clock)
    for tenant in ("a", "b", "a", "c"):
        with tracker.track(tenant):
            clock.now += 1
    assert len(tracker) == 2
    assert tracker.of("b").commands_total == 0  # idle longest: forgotten
    assert (tracker.of("a").commands_total, tracker.of("c").commands_total) == (2, 1)


def test_a_command_of_a_tenant_forgotten_while_it_ran_still_counts() -> None:
    tracker = ActivityTracker(max_tenants=1)
    slow = tracker.track("a")
    with tracker.track("b"):  # pushes "a" out while its command runs
        pass
    with tracker.track("a"), slow:  # tracked again before the slow one ends
        pass
    assert tracker.of("a").commands_total == 2
    assert len(tracker) == 1


# --- the handler feeds it ---------------------------------------------------------------


def command(key: AggregateKey, payload: dict[str, Any]) -> Command:
    return Command(key, uuid7(), payload, RequestContext.new())


@pytest.mark.trio
async def test_the_handler_counts_admitted_commands_per_tenant_not_refused_ones() -> None:
    types = StaticTypes(
        {TYPE: AggregateTypeSpec(TYPE, FunctionProgram(TYPE, bank.decide, bank.apply))}
    )
    gate = TenantGate(
        PlacementDecision("shard-a", validate_placement({"acme": "shard-a", "far": "shard-b"}))
    )
    tracker = ActivityTracker()
    handler = CommandHandler(
        store=InMemoryEventStore(),
        types=types,
        gate=gate,
        settings=HandlerSettings(retry_backoff_s=0),
        activity=tracker,
    )
    key = AggregateKey("acme", TYPE, uuid7())
    await handler.handle(command(key, {"type": "OpenAccount", "owner": "ann"}))
    with pytest.raises(CommandRejectedError):
        await handler.handle(command(key, {"type": "Withdraw", "amount": 5}))
    with pytest.raises(TenantUnavailableError):
        await handler.handle(command(AggregateKey("far", TYPE, uuid7()), {"type": "x"}))
    assert tracker.of("acme").commands_total == 2
    last = tracker.of("acme").last_activity
    assert last is not None
    assert datetime.datetime.fromisoformat(last.replace("Z", "+00:00")).tzinfo is not None
    assert tracker.of("far") == TenantActivity(0, None)
    assert handler.cache.tenant_count("acme") == 1


# --- cached counts ----------------------------------------------------------------------


def instance(tenant: str, n: int) -> AggregateInstance:
    key = AggregateKey(tenant, TYPE, uuid.UUID(int=n))
    return AggregateInstance(key, {}, version=1, history=CommandHistory(10))


OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "discard", "discard_tenant", "clear"]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 5),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(0, 6), ops=OPS)
def test_cached_counts_per_tenant_match_a_recount(
    capacity: int, ops: list[tuple[str, str, int]]
) -> None:
    cache = AggregateCache(capacity)
    for op, tenant, n in ops:
        if op == "put":
            cache.put(instance(tenant, n))
        elif op == "discard":
            cache.discard(instance(tenant, n).key)
        elif op == "discard_tenant":
            cache.discard_tenant(tenant)
        else:
            cache.clear()
        for name in ("a", "b", "c"):
            recount = sum(1 for key in cache._items if key.tenant_id == name)
            assert cache.tenant_count(name) == recount
    assert sum(cache.tenant_count(t) for t in "abc") == len(cache)


# --- the page parameters ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "page"),
    [
        (b"", TenantPage(None, DEFAULT_TENANT_PAGE)),
        (b"limit=1", TenantPage(None, 1)),
        (b"after=acme&limit=1000", TenantPage("acme", MAX_TENANT_PAGE)),
        (b"after=a%2Dz", TenantPage("a-z", DEFAULT_TENANT_PAGE)),
    ],
)
def test_tenant_page_parameters(query: bytes, page: TenantPage) -> None:
    assert parse_tenant_page(query) == page


@pytest.mark.parametrize(
    ("query", "says"),
    [
        (b"limit=0", "limit must be a whole number from 1 to 1000, got '0'"),
        (b"limit=1001", "from 1 to 1000"),
        (b"limit=-1", "from 1 to 1000"),
        (b"limit=1e3", "from 1 to 1000"),
        (b"limit=" + b"9" * 5000, "…("),
        (b"limit=", "from 1 to 1000"),
        (b"after=a/b", "after: "),
        (b"after=" + b"x" * 65, "after: "),
        (b"after=", "after: "),
        (b"limit=1&limit=2", "give 'limit' at most once"),
        (b"page=2", "unknown field(s) 'page'; allowed: limit, after"),
        (b"limit", "name=value pairs"),
        (b"&".join([b"a=1"] * 9), "at most 8 name=value pairs"),
        (b"after=%ff", "name=value pairs"),
        ("after=é".encode(), "name=value pairs"),
    ],
)
def test_bad_tenant_page_parameters_are_refused_with_a_short_reason(
    query: bytes, says: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_tenant_page(query)
    assert says in info.value.message
    assert len(info.value.message) < 300


# --- pages ------------------------------------------------------------------------------


def test_walking_the_pages_lists_every_tenant_once_in_id_order() -> None:
    names = [f"t-{i:03}" for i in range(25)]
    gate = TenantGate(PlacementDecision("shard-a", hosted_tenants=frozenset(names)))
    cache = AggregateCache(100)
    cache.put(instance("t-007", 1))
    cache.put(instance("t-007", 2))
    tracker = ActivityTracker()
    with tracker.track("t-003"):
        pass
    for limit in (1, 5, 7, 25, 100):
        seen: list[str] = []
        after = None
        pages = 0
        while True:
            listing = tenant_views.page(gate, cache, tracker, TenantPage(after, limit))
            pages += 1
            assert len(listing.tenants) <= limit
            seen += [view["tenant_id"] for view in listing.tenants]
            if listing.next_after is None:
                break
            assert listing.next_after == seen[-1]
            after = listing.next_after
        assert seen == names
        assert pages == -(-len(names) // limit)  # a full last page does not ask again
    (view,) = tenant_views.page(gate, cache, tracker, TenantPage("t-006", 1)).tenants
    assert (view["tenant_id"], view["aggregates_cached"]) == ("t-007", 2)
    view = tenant_views.status_view(gate, cache, tracker, "t-003")
    assert view["commands_total"] == 1
    assert view["aggregates_snapshotted"] is None
    assert tenant_views.page(gate, cache, tracker, TenantPage("zzz", 10)).tenants == []


def test_snapshot_counts_fill_the_views_or_stay_unknown() -> None:
    gate = TenantGate(PlacementDecision("shard-a", hosted_tenants=frozenset({"a", "b"})))
    views = tenant_views.page(gate, AggregateCache(1), ActivityTracker(), TenantPage()).tenants
    filled = tenant_views.with_snapshot_counts(views, {"a": 3})
    assert [v["aggregates_snapshotted"] for v in filled] == [3, 0]
    unknown = tenant_views.with_snapshot_counts(views, None)
    assert [v["aggregates_snapshotted"] for v in unknown] == [None, None]


# --- snapshot counts from SQLite --------------------------------------------------------


def snapshot(tenant: str, n: int) -> Snapshot:
    key = AggregateKey(tenant, TYPE, uuid.UUID(int=n))
    return Snapshot(
        key=key,
        version=1,
        stream_seq=n,
        state={"n": n},
        history=FrozenHistory(),
        created_at="2026-01-02T03:04:05.678Z",
    )


@pytest.mark.trio
async def test_count_by_tenant_counts_each_tenant_through_the_primary_key(tmp_path: Any) -> None:
    store = await SqliteSnapshotStore.open(tmp_path)
    try:
        for i in range(5):
            await store.save(snapshot("acme", i))
        await store.save(snapshot("globex", 99))
        counts = await store.count_by_tenant(["acme", "globex", "nobody", "acme"])
        assert counts == {"acme": 5, "globex": 1}
        assert await store.count_by_tenant([]) == {}
        many = [f"t{i}" for i in range(1200)] + ["acme"]  # more than one statement's worth
        assert await store.count_by_tenant(many) == {"acme": 5}

        def plan(db: Any) -> list[str]:
            rows = db.execute("EXPLAIN QUERY PLAN " + count_by_tenant_sql(2), ["a", "b"])
            return [str(row[-1]) for row in rows.fetchall()]

        steps = await store._run(plan, "explain")
        assert any("USING COVERING INDEX" in s and "tenant_id=?" in s for s in steps), steps
        assert not any(s.startswith("SCAN") for s in steps), steps
    finally:
        await store.aclose()
