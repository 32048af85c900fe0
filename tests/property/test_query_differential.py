"""The compiled SQL (on a real SQLite file) and the in-memory predicate against the model.

Random states, filters and orders: every view the model matches is the view the SQL and
the predicate match, and following every page token (page sizes 1..7) gives exactly the
model's sorted answer, page by page. Rows of another tenant and another type with the same
states are in the file, and never in an answer.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from aggregate.query.plan import (
    QueryLimits,
    QueryRequest,
    compile_predicate,
    index_statements,
    plan_query,
    run_bounded,
)
from specs import query as model
from tests.property import query_strategies as qs

SCHEMA = """
CREATE TABLE IF NOT EXISTS views (
  tenant_id      TEXT NOT NULL,
  aggregate_type TEXT NOT NULL,
  aggregate_id   TEXT NOT NULL,
  version        INTEGER NOT NULL,
  position       INTEGER NOT NULL,
  updated_at     TEXT NOT NULL,
  state          TEXT NOT NULL,
  PRIMARY KEY (tenant_id, aggregate_type, aggregate_id)
)
"""
LIMITS = QueryLimits()
KEY = b"k" * 32


@pytest.fixture(scope="module")
def connection(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path: Path = tmp_path_factory.mktemp("query") / "views.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(SCHEMA)
    # Expression indexes change the plans SQLite picks, never the answers.
    for statement in index_statements("account", ["state.a", "state.b.a"]):
        conn.execute(statement)
    yield conn
    conn.close()


@st.composite
def view_sets(draw: st.DrawFn) -> list[model.ModelView]:
    ids = draw(st.lists(qs.aggregate_ids(), max_size=12, unique=True))
    return [
        model.ModelView(
            aggregate_id,
            draw(qs.versions),
            position,
            draw(qs.updated_ats),
            draw(qs.states),
        )
        for position, aggregate_id in enumerate(ids, 1)
    ]


def load(conn: sqlite3.Connection, views: list[model.ModelView]) -> None:
    conn.execute("DELETE FROM views")
    rows = []
    for tenant, kind in (("acme", "account"), ("other", "account"), ("acme", "order")):
        for v in views:
            state = json.dumps(v.state, ensure_ascii=False, separators=(",", ":"))
            rows.append((tenant, kind, v.aggregate_id, v.version, v.position, v.updated_at, state))
    conn.executemany("INSERT INTO views VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.commit()


def all_pages(conn: sqlite3.Connection, request: QueryRequest) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        req = QueryRequest(
            request.tenant_id,
            request.aggregate_type,
            request.filter,
            request.order_by,
            request.page_size,
            token,
        )
        plan = plan_query(req, limits=LIMITS, token_key=KEY)
        rows, token = plan.page(run_bounded(conn, plan, max_steps=LIMITS.max_sqlite_steps))
        pages.append([r.aggregate_id for r in rows])
        assert len(pages) <= 20, "the tokens do not end"
        if not token:
            return pages


def check(
    conn: sqlite3.Connection, views: list[model.ModelView], flt: str, order: str, size: int
) -> None:
    load(conn, views)
    request = QueryRequest("acme", "account", flt, order, size, "")
    expected = [[v.aggregate_id for v in page] for page in model.query(views, request)]
    assert all_pages(conn, request) == expected
    predicate = compile_predicate(flt, limits=LIMITS)
    for v in views:
        assert predicate(v) == model.matches(flt, v), v


@settings(max_examples=300)
@given(views=view_sets(), flt=qs.filters, order=qs.orders, size=st.integers(1, 7))
def test_sql_and_predicate_equal_the_model(
    connection: sqlite3.Connection, views: list[model.ModelView], flt: str, order: str, size: int
) -> None:
    note(f"filter={flt!r} order_by={order!r} page_size={size}")
    check(connection, views, flt, order, size)


@pytest.mark.slow
@settings(max_examples=3000)
@given(views=view_sets(), flt=qs.filters, order=qs.orders, size=st.integers(1, 7))
def test_sql_and_predicate_equal_the_model_large_budget(
    connection: sqlite3.Connection, views: list[model.ModelView], flt: str, order: str, size: int
) -> None:
    check(connection, views, flt, order, size)


def test_other_tenants_and_types_never_answer(connection: sqlite3.Connection) -> None:
    views = [
        model.ModelView(str(uuid.UUID(int=i)), 1, i, "2026-01-01T00:00:00.000Z", {"a": i})
        for i in range(1, 4)
    ]
    load(connection, views)
    connection.execute("DELETE FROM views WHERE tenant_id = 'acme' AND aggregate_type = 'account'")
    assert all_pages(connection, QueryRequest("acme", "account", "", "", 2, "")) == [[]]


BIG = [2**63 - 1, 2**63, 2**64 + 1, 2**70, 10**30, -(2**63), -(2**63) - 1, 1, 1.5, None]
BIG += ["x", "x\x00a", "x\x00b", "w", "\x00"]  # SQLite reads a string up to its first U+0000


@pytest.mark.parametrize("order", ["state.a", "state.a desc", "state.a desc, version"])
def test_numbers_beyond_64_bits_and_strings_with_nul_page_like_the_model(
    connection: sqlite3.Connection, order: str
) -> None:
    views = [
        model.ModelView(
            str(uuid.UUID(int=i + 1)), 1 + i % 2, i + 1, "2026-01-01T00:00:00.000Z", {"a": value}
        )
        for i, value in enumerate(BIG)
    ]
    for flt in ("", "state.a >= 9223372036854775807", "state.a = -9223372036854775808"):
        check(connection, views, flt, order, 1)
