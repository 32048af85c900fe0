"""A watch's filter is the query language's predicate over the change's new view."""

from __future__ import annotations

import pytest

from aggregate.domain.errors import InvalidArgumentError
from aggregate.query.plan import QueryLimits
from aggregate.watch.changes import ChangeView
from aggregate.watch.filters import compile_filter


def view(balance: object) -> ChangeView:
    return ChangeView(
        "0190a0c0-0000-7000-8000-000000000001", 3, "2026-12-02T00:00:00.000Z", {"balance": balance}
    )


def test_the_empty_filter_is_every_change() -> None:
    assert compile_filter("") is None


def test_a_filter_keeps_only_matching_views_with_the_query_semantics() -> None:
    predicate = compile_filter("state.balance > 50 AND version = 3")
    assert predicate is not None
    assert predicate(view(51))
    assert not predicate(view(50))
    assert not predicate(view("99"))  # a string is not a number: no match, as in SQL


def test_a_bad_filter_is_invalid_argument_naming_the_column() -> None:
    with pytest.raises(InvalidArgumentError, match="column"):
        compile_filter("state.balance >")


def test_a_watch_filter_keeps_the_configured_limits() -> None:
    text = "state.balance > 50"
    at_the_limit = compile_filter(text, QueryLimits(max_filter_chars=len(text)))
    assert at_the_limit is not None
    assert (at_the_limit(view(51)), at_the_limit(view(50))) == (True, False)
    with pytest.raises(InvalidArgumentError):
        compile_filter(text, QueryLimits(max_filter_chars=len(text) - 1))
