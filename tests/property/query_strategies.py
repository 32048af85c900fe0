"""Hypothesis strategies for the read side: states, views, filters and orders.

Keys come from a small alphabet so that filters and states meet; values cover every JSON
kind and the edges of the comparison rules (64-bit limits, integers beyond them, floats,
non-ASCII text). A state machine can draw filters and orders from here for its queries.
"""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import strategies as st

from aggregate.query.ast import (
    And,
    Comparison,
    Node,
    Not,
    Or,
    OrderKey,
    Path,
    Presence,
    render,
    render_order,
)

KEYS = ("a", "b", "c")
OPS = ("=", "!=", "<", "<=", ">", ">=")

integers = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64 + 1, 2**70, 10**30]),
    st.integers(-(2**80), 2**80),
)
floats = st.one_of(
    st.sampled_from([0.5, -0.0, 1.0, 2.0, 9.223372036854776e18, 1e300]),
    st.floats(allow_nan=False, allow_infinity=False),
)
ALPHABET = ["a", "b", "A", " ", "é", "ß", "€", "\U0001f600", "\x7f", '"', "\\"]
texts = st.text(alphabet=st.sampled_from(ALPHABET), max_size=4)
"""Strings for literals (a filter may not hold U+0000)."""
state_texts = st.text(alphabet=st.sampled_from([*ALPHABET, "\x00"]), max_size=4)
"""Strings for states: U+0000 too (SQLite reads a string up to it)."""
scalars: st.SearchStrategy[Any] = st.one_of(st.none(), st.booleans(), integers, floats, texts)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(scalars, state_texts),
    lambda inner: st.one_of(
        st.lists(inner, max_size=2), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=6,
)
states: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.sampled_from(KEYS), json_values, max_size=3
)
updated_ats = st.sampled_from(
    ["2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00.500Z", "2026-06-30T12:00:00.000Z"]
)
versions = st.integers(1, 4)


@st.composite
def aggregate_ids(draw: st.DrawFn) -> str:
    return str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1))))


state_paths = st.lists(st.sampled_from(KEYS), min_size=1, max_size=2).map(
    lambda keys: Path("state", tuple(keys))
)
paths = st.one_of(
    state_paths, st.sampled_from([Path("aggregate_id"), Path("version"), Path("updated_at")])
)


@st.composite
def comparisons(draw: st.DrawFn) -> Node:
    path = draw(paths)
    if path.column == "state":
        value = draw(scalars)
        ops = ("=", "!=") if value is None or isinstance(value, bool) else OPS
    elif path.column == "version":
        value, ops = draw(st.one_of(versions, st.floats(0, 5), integers)), OPS
    elif path.column == "updated_at":
        value, ops = draw(st.one_of(updated_ats, texts)), OPS
    else:
        value, ops = draw(st.one_of(aggregate_ids(), texts)), OPS
    return Comparison(path, draw(st.sampled_from(ops)), value)


terms: st.SearchStrategy[Node] = st.one_of(comparisons(), paths.map(Presence))
filter_nodes: st.SearchStrategy[Node] = st.recursive(
    terms,
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
        inner.map(Not),
    ),
    max_leaves=8,
)
filters: st.SearchStrategy[str] = st.one_of(st.just(""), filter_nodes.map(render))
"""Filter texts (canonical spelling; '' is every view)."""

orders: st.SearchStrategy[str] = st.one_of(
    st.just(""),
    st.lists(
        st.builds(OrderKey, paths, st.booleans()),
        min_size=1,
        max_size=3,
        unique_by=lambda k: k.path,
    ).map(lambda keys: render_order(tuple(keys))),
)
"""order_by texts."""
