"""The watch hub's buffer keeps changes as packed text: what comes back is what went in, and
a full buffer gives the cyclic garbage collector nothing to walk (its full collections
paused the command path for every change buffered)."""

from __future__ import annotations

import gc
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregate.domain.envelopes import Event
from aggregate.domain.ids import AggregateKey, uuid7
from aggregate.watch.changes import Change, WatchSubset, packed_may_match, unpack
from aggregate.watch.hub import WatchHub, WatchLimits
from tests.property import query_strategies as qs
from tests.unit.test_watch_hub import key, record, running, settle

uuids = st.integers(0, 2**128 - 1).map(lambda n: uuid.UUID(int=n))
names = st.text(alphabet=st.sampled_from(["a", "-", "é", '"', "\\", "\U0001f600"]), max_size=5)
events = st.builds(
    Event,
    event_id=uuids,
    event_type=names,
    version=st.integers(1, 2**63),
    payload=qs.states,
    timestamp=qs.updated_ats,
)


@st.composite
def changes(draw: st.DrawFn) -> Change:
    return Change.of(
        AggregateKey(draw(names), draw(names), draw(uuids)),
        version=draw(st.integers(0, 2**80)),
        position=draw(st.integers(1, 2**64)),
        command_id=draw(uuids),
        events=tuple(draw(st.lists(events, max_size=3))),
        state=draw(st.one_of(st.none(), qs.states)),
    )


@given(changes())
def test_a_packed_change_unpacks_to_itself(change: Change) -> None:
    back = unpack(change.packed)
    assert back == change
    assert (back.size, back.text) == (change.size, change.text)
    assert [(type(v), v) for v in _leaves(back.state)] == [
        (type(v), v) for v in _leaves(change.state)
    ], "integers stay integers (2**80 exact), floats floats"


def test_a_change_made_without_its_text_packs_the_same() -> None:
    made = Change.of(
        key(), version=3, position=9, command_id=uuid7(), events=(), state={"n": 2**80}
    )
    bare = Change(made.key, 3, 9, made.command_id, (), {"n": 2**80}, made.size)
    assert bare.packed == made.packed


def test_a_packed_change_matches_by_tenant_type_and_aggregate_before_it_is_unpacked() -> None:
    change = Change.of(
        key("acme"), version=1, position=1, command_id=uuid7(), events=(), state=None
    )
    packed = change.packed
    assert packed_may_match(packed, WatchSubset("acme"))
    assert packed_may_match(packed, WatchSubset("acme", change.key.aggregate_type))
    assert packed_may_match(packed, WatchSubset("acme", "", change.key.aggregate_id))
    assert not packed_may_match(packed, WatchSubset("globex"))
    assert not packed_may_match(packed, WatchSubset("acme", "other-type"))
    assert not packed_may_match(packed, WatchSubset("acme", "", uuid7()))


@pytest.mark.trio
async def test_a_full_buffer_gives_the_collector_nothing_to_walk() -> None:
    count = 2000
    async with running(WatchHub(WatchLimits(buffer_changes=count))) as hub:
        hub.stored(hub.begin(), 1, record(key(), note="x"), {"n": 1})  # one-time structures
        await settle()
        gc.collect()
        before = len(gc.get_objects())
        for position in range(2, count + 1):
            hub.stored(hub.begin(), position, record(key(), note="x"), {"n": position})
        await settle()
        assert hub.buffered[0] == count
        gc.collect()
        grown = len(gc.get_objects()) - before
        # Kept as objects, each change was six tracked objects (~12,000 here), and the
        # cache of UUID texts two per id rendered (up to 8,192).
        assert grown < count // 10, f"{grown} more objects for the collector to walk"
        _, backlog = hub.watch(WatchSubset("acme"), count - 2)
        assert backlog is not None
        assert [(c.position, c.state) for c in backlog] == [
            (count - 1, {"n": count - 1}),
            (count, {"n": count}),
        ]


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]
