"""The query language: grammar, canonical text, errors and limits, page tokens, the
progress bound and the use of expression indexes (on a real SQLite file)."""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from pathlib import Path

import pytest
from hypothesis import given

from aggregate.domain.errors import InvalidArgumentError, QueryTooExpensiveError
from aggregate.domain.status import status_of
from aggregate.query.ast import Node, render
from aggregate.query.parse import parse_filter
from aggregate.query.plan import (
    QueryLimits,
    QueryRequest,
    compile_predicate,
    field_sql,
    index_statements,
    plan_query,
    run_bounded,
    validate_index_path,
)
from specs import query as model
from tests.property import query_strategies as qs
from tests.property.test_query_differential import SCHEMA

LIMITS = QueryLimits()
KEY = b"secret-key-for-tests-0123456789ab"


def request(
    flt: str = "", order: str = "", size: int = 0, token: str = "", **kw: str
) -> QueryRequest:
    return QueryRequest(
        kw.get("tenant", "acme"), kw.get("type", "account"), flt, order, size, token
    )


def error_of(flt: str, limits: QueryLimits = LIMITS) -> str:
    with pytest.raises(InvalidArgumentError) as info:
        parse_filter(flt, limits)
    return info.value.message


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", ""),
        ("   ", ""),
        (
            'state.balance > 50 AND state.owner = "ann"',
            '(state.balance > 50) AND (state.owner = "ann")',
        ),
        ("state.a:* OR NOT version >= 3", "(state.a:*) OR (NOT (version >= 3))"),
        (
            "(state.a = 1 AND (state.b = 2 AND state.c = 3))",
            "(state.a = 1) AND (state.b = 2) AND (state.c = 3)",
        ),
        ('state.AND = "\\u00e9\\n"', 'state.AND = "é\\n"'),
        ("state.x = -1.5e3", "state.x = -1500.0"),
        ("state.x != null", "state.x != null"),
        ("state.x = 99999999999999999999", "state.x = 1e+20"),
        ('updated_at >= "2026-01-01T00:00:00.000Z"', 'updated_at >= "2026-01-01T00:00:00.000Z"'),
    ],
)
def test_filters_parse_to_their_canonical_text(text: str, canonical: str) -> None:
    assert render(parse_filter(text, LIMITS)) == canonical


@given(qs.filter_nodes)
def test_canonical_text_is_a_fixed_point(node: Node) -> None:
    # nested ANDs (ORs) flatten into one, so the tree may differ from the drawn one once
    canonical = render(parse_filter(render(node), LIMITS))
    assert parse_filter(canonical, LIMITS) == parse_filter(render(node), LIMITS)
    assert render(parse_filter(canonical, LIMITS)) == canonical


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("state.x = ", "filter at column 10: unexpected end of input"),
        ("state.x == 1", "filter at column 10: unexpected '= 1'"),
        ("state.x = 'a'", "filter at column 11: unexpected \"'a'\""),
        ("state.a = 1 state.b = 2", "filter at column 13: unexpected 'state.b = 2'"),
        ("balance > 1", "filter at column 1: unknown field 'balance'"),
        ("state > 1", "filter at column 1: unknown field 'state'"),
        ("state.x > true", "filter at column 9: a boolean compares with = or !="),
        ("state.x < null", "filter at column 9: null compares with = or !="),
        ('version = "3"', "filter at column 11: version compares with numbers"),
        ("aggregate_id = 3", "filter at column 16: aggregate_id compares with strings"),
        ("version = null", "filter at column 9: version is never null"),
        ("state.x = 1e999", "filter at column 11: number out of range"),
        ('state.x = "\\ud800"', "filter at column 11: a string may not hold a lone surrogate"),
        ('state.x = "\\u0000"', "filter at column 11: a string may not hold U+0000"),
        ("state.x = 1\nOR state.y = 2", "filter must be one line"),
        ("state.x:y", "filter at column 9: unexpected 'y'"),
        ("state.x = 1 and state.y = 2", "filter at column 13: unexpected 'and state.y = 2'"),
    ],
)
def test_bad_filters_name_the_column(text: str, message: str) -> None:
    assert error_of(text).startswith(message)


def test_errors_quote_a_short_excerpt_never_the_whole_filter() -> None:
    text = "state.a = 1 " + "x" * 3000
    message = error_of(text)
    assert message.startswith("filter at column 13: unexpected 'xxxx")
    assert len(message) < 100


def test_limits_on_length_depth_and_terms() -> None:
    assert error_of("state.a = 1 " * 400) == "filter is 4800 characters long; the limit is 4096"
    deep = "(" * 17 + "state.a = 1" + ")" * 17
    assert error_of(deep) == "filter is nested more than 16 levels deep"
    parse_filter("(" * 15 + "state.a = 1" + ")" * 15, LIMITS)
    assert error_of("NOT " * 17 + "state.a:*") == "filter is nested more than 16 levels deep"
    # a deep input as long as allowed is refused without recursing
    assert "nested" in error_of(
        "(" * 2000 + "state.a:*" + ")" * 2000, QueryLimits(max_filter_chars=5000)
    )
    many = " OR ".join(f"state.a = {i}" for i in range(65))
    assert error_of(many) == "filter has more than 64 terms"
    parse_filter(" OR ".join(f"state.a = {i}" for i in range(64)), LIMITS)


@pytest.mark.parametrize(
    ("order", "message"),
    [
        ("state.x sideways", "order_by at column 9: unexpected 'sideways'"),
        ("balance", "order_by at column 1: unknown field 'balance'"),
        ("version, version desc", "order_by names a field twice"),
        (", ".join(f"state.k{i}" for i in range(9)), "order_by names more than 8 fields"),
    ],
)
def test_bad_orders_are_invalid_arguments(order: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        plan_query(request(order=order), limits=LIMITS, token_key=KEY)
    assert info.value.message.startswith(message)


@pytest.mark.parametrize("size", [-1, 1001])
def test_page_size_out_of_range_is_refused(size: int) -> None:
    with pytest.raises(InvalidArgumentError, match="page_size must be between 0 and 1000"):
        plan_query(request(size=size), limits=LIMITS, token_key=KEY)


def test_values_are_parameters_never_sql_text() -> None:
    plan = plan_query(
        request('state.owner = "x\'); DROP TABLE views; --"'), limits=LIMITS, token_key=KEY
    )
    assert "DROP" not in plan.sql
    assert "x'); DROP TABLE views; --" in plan.params
    assert plan.params[-1] == 51  # one more row than the page, to know whether there is a next


@pytest.fixture
def db(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "views.sqlite")
    conn.execute(SCHEMA)
    rows = [
        (
            t,
            "account",
            str(uuid.UUID(int=i)),
            1,
            i,
            "2026-01-01T00:00:00.000Z",
            json.dumps({"balance": i % 1000, "owner": f"o{i % 7}"}),
        )
        for t in ("acme", "other")
        for i in range(1, 2001)
    ]
    conn.executemany("INSERT INTO views VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    for statement in index_statements("account", ["state.balance"]):
        conn.execute(statement)
    conn.execute("ANALYZE")
    conn.commit()
    return conn


def first_token(db: sqlite3.Connection, **kw: str) -> str:
    plan = plan_query(
        request(kw.get("flt", "state.balance < 10"), kw.get("order", ""), 2),
        limits=LIMITS,
        token_key=KEY,
    )
    rows, token = plan.page(run_bounded(db, plan, max_steps=LIMITS.max_sqlite_steps))
    assert len(rows) == 2
    assert token
    return token


def test_a_token_pages_on_and_ends(db: sqlite3.Connection) -> None:
    token = first_token(db)
    ids: list[str] = []
    while token:
        plan = plan_query(request("state.balance < 10", "", 2, token), limits=LIMITS, token_key=KEY)
        rows, token = plan.page(run_bounded(db, plan, max_steps=LIMITS.max_sqlite_steps))
        ids += [r.aggregate_id for r in rows]
    assert len(ids) == 2 * 10 - 2  # balances 1..9 twice (i and i + 1000), less the first page
    assert ids == sorted(ids)


@pytest.mark.parametrize(
    "other",
    [
        {"tenant": "other"},
        {"type": "order"},
        {"flt": "state.balance < 11"},
        {"order": "version"},
    ],
)
def test_a_token_from_another_query_is_refused(
    db: sqlite3.Connection, other: dict[str, str]
) -> None:
    token = first_token(db)
    req = request(
        other.get("flt", "state.balance < 10"),
        other.get("order", ""),
        2,
        token,
        tenant=other.get("tenant", "acme"),
        type=other.get("type", "account"),
    )
    with pytest.raises(InvalidArgumentError, match="page token does not belong to this query"):
        plan_query(req, limits=LIMITS, token_key=KEY)


def test_the_same_filter_spelled_differently_shares_tokens(db: sqlite3.Connection) -> None:
    token = first_token(db)
    plan_query(
        request("(state.balance<10)", "aggregate_id", 2, token), limits=LIMITS, token_key=KEY
    )


def test_a_token_altered_in_any_byte_or_under_another_key_is_refused(
    db: sqlite3.Connection,
) -> None:
    token = first_token(db)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for i in range(len(raw)):
        altered = bytearray(raw)
        altered[i] ^= 0x01
        bad = base64.urlsafe_b64encode(bytes(altered)).decode().rstrip("=")
        with pytest.raises(InvalidArgumentError, match="page token"):
            plan_query(request("state.balance < 10", "", 2, bad), limits=LIMITS, token_key=KEY)
    with pytest.raises(InvalidArgumentError, match="does not belong"):
        plan_query(request("state.balance < 10", "", 2, token), limits=LIMITS, token_key=b"other")


@pytest.mark.parametrize(
    "token", ["x", "!!!!", "é", "A" * 70000, base64.urlsafe_b64encode(b"short").decode()]
)
def test_garbage_tokens_are_malformed(token: str) -> None:
    with pytest.raises(InvalidArgumentError, match="page token is malformed"):
        plan_query(request(token=token), limits=LIMITS, token_key=KEY)


def test_a_selective_filter_on_an_indexed_path_uses_the_index(db: sqlite3.Connection) -> None:
    plan = plan_query(
        request('state.balance = 7 AND state.owner != "o1"'), limits=LIMITS, token_key=KEY
    )
    details = " ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + plan.sql, plan.params))
    assert "USING INDEX views_account_state_balance" in details
    assert "<expr>=?" in details
    unindexed = plan_query(request('state.owner = "o1"'), limits=LIMITS, token_key=KEY)
    details = " ".join(
        row[3] for row in db.execute("EXPLAIN QUERY PLAN " + unindexed.sql, unindexed.params)
    )
    assert "<expr>" not in details


def test_work_beyond_the_bound_is_resource_exhausted(db: sqlite3.Connection) -> None:
    plan = plan_query(
        request('state.owner = "o1"', "state.owner desc"), limits=LIMITS, token_key=KEY
    )
    with pytest.raises(QueryTooExpensiveError) as info:
        run_bounded(db, plan, max_steps=10_000)
    assert status_of(info.value) == ("RESOURCE_EXHAUSTED", 429)
    # the handler is removed afterwards: the same connection runs the query in full
    assert len(run_bounded(db, plan, max_steps=LIMITS.max_sqlite_steps)) == 51
    assert len(db.execute("SELECT * FROM views").fetchall()) == 4000


def test_field_sql_and_index_paths() -> None:
    assert field_sql("state.balance") == "json_extract(state, '$.balance')"
    assert field_sql("version") == "version"
    assert validate_index_path("state.a.b") == "state.a.b"
    for bad in ["state", "version", "state.a-b", "state.'x'", "", "state." + "a." * 17 + "a"]:
        with pytest.raises(ValueError, match="index path"):
            validate_index_path(bad)
    with pytest.raises(ValueError, match="not a valid type name"):
        index_statements("bad'type", ["state.a"])
    a, b = index_statements("a_b", ["state.c"]) + index_statements("a", ["state.b_c"])
    assert a.split('"')[1] != b.split('"')[1]


DOCUMENTED = [
    ("state.balance > 50", {"balance": 51}, True),
    ("state.balance > 50", {"balance": "99"}, False),
    ("state.balance != 50", {"balance": "x"}, False),
    ("state.balance != 50", {}, False),
    ("NOT state.balance = 50", {}, True),
    ("state.x = null", {}, False),
    ("state.x = null", {"x": None}, True),
    ("state.x != null", {"x": 0}, True),
    ("state.x != null", {}, False),
    ("state.x:*", {"x": None}, True),
    ("state.f != true", {"f": False}, True),
    ("state.f != true", {"f": 1}, False),
    ("state.n = 2", {"n": 2.0}, True),
    ("state.n > 9007199254740992.0", {"n": 9007199254740993}, True),
    ("state.n = 18446744073709551617", {"n": 18446744073709551616}, True),
    ('state.address.city = "Zürich"', {"address": {"city": "Zürich"}}, True),
    ("state.address.city:*", {"address": "Zürich"}, False),
    ('state.s < "é"', {"s": "z"}, True),
    ('state.s > "\U0001f600"', {"s": "\uffff"}, False),
    ('state.s = "x"', {"s": "x\x00y"}, True),
]


@pytest.mark.parametrize(("flt", "state", "expected"), DOCUMENTED)
def test_documented_semantics_hold_in_sql_predicate_and_model(
    tmp_path: Path, flt: str, state: dict[str, object], expected: bool
) -> None:
    conn = sqlite3.connect(tmp_path / "one.sqlite")
    conn.execute(SCHEMA)
    conn.execute(
        "INSERT INTO views VALUES ('acme', 'account', 'id', 1, 1, 't', ?)",
        (json.dumps(state, ensure_ascii=False),),
    )
    plan = plan_query(request(flt), limits=LIMITS, token_key=KEY)
    assert bool(run_bounded(conn, plan, max_steps=LIMITS.max_sqlite_steps)) is expected
    view = model.ModelView("id", 1, 1, "t", state)
    assert compile_predicate(flt, limits=LIMITS)(view) is expected
    assert model.matches(flt, view) is expected
