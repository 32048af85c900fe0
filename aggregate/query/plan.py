"""The query planner of the read side: a request to one parameterised, keyset-paged SQL
statement over ``views``, run under a bound on SQLite's work.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aggregate.domain.errors import InvalidArgumentError, QueryTooExpensiveError, quote
from aggregate.query.ast import render, render_order
from aggregate.query.compile import compile_filter, field_sql
from aggregate.query.order import after_sql, components, order_by_sql, sort_values
from aggregate.query.parse import parse_filter, parse_order, path_of
from aggregate.query.predicate import compile_predicate
from aggregate.query.tokens import decode_token, encode_token

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aggregate.query.ast import OrderKey
    from aggregate.query.order import Component

__all__ = [
    "QueryLimits",
    "QueryPlan",
    "QueryRequest",
    "Row",
    "compile_predicate",
    "field_sql",
    "index_statements",
    "plan_query",
    "run_bounded",
    "validate_index_path",
]

PROGRESS_INTERVAL = 1000
"""SQLite virtual-machine instructions between two calls of the progress handler."""


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """Bounds on one query: the filter's size, the page, and SQLite's work."""

    max_filter_chars: int = 4096
    max_depth: int = 16  # nesting of AND/OR/NOT/parentheses
    max_terms: int = 64  # comparisons + presence tests
    default_page_size: int = 50
    max_page_size: int = 1000
    max_sqlite_steps: int = 10_000_000  # SQLite VM instructions (run_bounded): ~10 a row scanned


@dataclass(frozen=True, slots=True)
class QueryRequest:
    tenant_id: str
    aggregate_type: str
    filter: str  # '' = all
    order_by: str  # '' = aggregate_id
    page_size: int  # 0 = default; negative or > max -> InvalidArgumentError
    page_token: str  # '' = first page


@dataclass(frozen=True, slots=True)
class Row:
    """One selected row, as read from ``views``."""

    aggregate_id: str
    version: int
    position: int
    updated_at: str
    state: str


_SELECT = "SELECT aggregate_id, version, position, updated_at, state FROM views"


@dataclass(frozen=True, slots=True)
class QueryPlan:
    """The SQL of one page of a query, and how to cut its answer into a page and a token."""

    sql: str
    params: tuple[object, ...]
    page_size: int
    order: tuple[OrderKey, ...]
    token_key: bytes
    scope: tuple[str, str, str, str]

    def page(self, rows: Sequence[Row]) -> tuple[list[Row], str]:
        """The rows to answer (at most page_size; the SQL asks for one more) and the next
        page token ('' on the last page)."""
        if len(rows) <= self.page_size:
            return list(rows), ""
        answer = list(rows[: self.page_size])
        values = sort_values(self.order, answer[-1])
        return answer, encode_token(self.token_key, self.scope, values)


def plan_query(request: QueryRequest, *, limits: QueryLimits, token_key: bytes) -> QueryPlan:
    """The plan of one page of ``request``.

    Raises:
        InvalidArgumentError: naming the position in the filter, the bad order_by, the
            page_size, or a tampered or foreign page token.
    """
    if request.page_size < 0 or request.page_size > limits.max_page_size:
        raise InvalidArgumentError(
            f"page_size must be between 0 and {limits.max_page_size}; got {request.page_size}"
        )
    page_size = request.page_size or limits.default_page_size
    node = parse_filter(request.filter, limits)
    order = parse_order(request.order_by, limits)
    scope = (request.tenant_id, request.aggregate_type, render(node), render_order(order))
    comps: list[Component] = components(order)
    params: list[object] = [request.tenant_id, request.aggregate_type]
    where = [compile_filter(node, params)]
    if request.page_token:
        last = decode_token(token_key, scope, request.page_token, len(comps))
        where.append(after_sql(comps, last, params))
    params.append(page_size + 1)
    sql = (
        f"{_SELECT} WHERE tenant_id = ? AND aggregate_type = ? AND {' AND '.join(where)} "
        f"ORDER BY {order_by_sql(comps)} LIMIT ?"
    )
    return QueryPlan(sql, tuple(params), page_size, order, token_key, scope)


def run_bounded(connection: sqlite3.Connection, plan: QueryPlan, *, max_steps: int) -> list[Row]:
    """The rows of ``plan``, run with a progress handler that stops the statement once it
    has run ``max_steps`` SQLite instructions (counted in steps of ``PROGRESS_INTERVAL``).

    Raises:
        QueryTooExpensiveError: the query needed more work than ``max_steps``.
    """
    steps = 0

    def progress() -> int:
        nonlocal steps
        steps += PROGRESS_INTERVAL
        return 1 if steps > max_steps else 0

    connection.set_progress_handler(progress, PROGRESS_INTERVAL)
    try:
        rows = connection.execute(plan.sql, plan.params).fetchall()
    except sqlite3.OperationalError as exc:
        if steps > max_steps:
            raise QueryTooExpensiveError(
                "the query needs more work than a query may do; add an indexed, more "
                "selective filter term or a smaller page_size"
            ) from exc
        raise
    finally:
        connection.set_progress_handler(None, 0)
    return [Row(*row) for row in rows]


_TYPE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def validate_index_path(path: str) -> str:
    """``path`` when it is a state path the index can hold (``state.<key>[.<key>...]``).

    Raises:
        ValueError: with a message naming the path.
    """
    try:
        parsed = path_of(path)
    except InvalidArgumentError as exc:
        raise ValueError(f"index path {quote(path)}: {exc.message}") from None
    if parsed.column != "state":
        raise ValueError(f"index path {quote(path)} must be a state path (state.<key>...)")
    return path


def index_statements(aggregate_type: str, paths: Sequence[str]) -> list[str]:
    """CREATE INDEX IF NOT EXISTS statements for a type's manifest ``indexes:``: partial
    indexes (WHERE aggregate_type = '<type>') on (tenant_id, <path's expression>,
    aggregate_id), named after the type and path.

    Raises:
        ValueError: a type name outside [A-Za-z0-9_-]{1,64}, or a bad path.
    """
    if not _TYPE_NAME.fullmatch(aggregate_type):
        raise ValueError(f"aggregate type {quote(aggregate_type)} is not a valid type name")
    statements = []
    for path in paths:
        validate_index_path(path)
        digest = hashlib.sha256(f"{aggregate_type}\0{path}".encode()).hexdigest()[:12]
        name = f"views_{aggregate_type}_{path}_{digest}".replace(".", "_").replace("-", "_")
        statements.append(
            f'CREATE INDEX IF NOT EXISTS "{name}" ON views '
            f"(tenant_id, {field_sql(path)}, aggregate_id) "
            f"WHERE aggregate_type = '{aggregate_type}'"
        )
    return statements
