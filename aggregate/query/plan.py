"""The query planner: requests to parameterised SQL over the ``views`` table.

This version plans the empty filter (every view of the type) ordered by ``aggregate_id``
only; filters and other orders are refused with INVALID_ARGUMENT. Pages are keyset pages
(never OFFSET) with opaque, tamper-evident page tokens: URL-safe base64 of the last row's
aggregate id and an HMAC-SHA256 over the tenant, the type, the filter, the order and that id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aggregate.domain.errors import InvalidArgumentError, ResourceExhaustedError, quote

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

_COLUMNS = "aggregate_id, version, position, updated_at, state"
_TYPE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PATH = re.compile(r"state(\.[A-Za-z_][A-Za-z0-9_]*)+")
_MAC_BYTES = 16
_NOT_YET = "filters are not supported yet"


class QueryTooExpensiveError(ResourceExhaustedError):
    """Raised when one query needs more SQLite work than ``max_sqlite_steps`` allows."""


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """Bounds on one query."""

    max_filter_chars: int = 4096
    max_depth: int = 16
    max_terms: int = 64
    default_page_size: int = 50
    max_page_size: int = 1000
    max_sqlite_steps: int = 10_000_000


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """One page request (the tenant from the call's metadata, never from the body)."""

    tenant_id: str
    aggregate_type: str
    filter: str
    order_by: str
    page_size: int
    page_token: str


@dataclass(frozen=True, slots=True)
class Row:
    """One selected row, as read from ``views``."""

    aggregate_id: str
    version: int
    position: int
    updated_at: str
    state: str


class ViewLike(Protocol):
    aggregate_id: str
    version: int
    updated_at: str
    state: Mapping[str, Any]


class QueryPlan:
    """The SQL of one page and how to cut the answer into the page and its next token."""

    def __init__(
        self, sql: str, params: tuple[object, ...], page_size: int, sign: Callable[[str], str]
    ) -> None:
        self.sql = sql
        self.params = params
        self.page_size = page_size
        self._sign = sign

    def page(self, rows: Sequence[Row]) -> tuple[list[Row], str]:
        """The rows to answer (at most page_size; the SQL asks for one more) and the next
        page token ('' on the last page)."""
        if len(rows) <= self.page_size:
            return list(rows), ""
        page = list(rows[: self.page_size])
        return page, self._sign(page[-1].aggregate_id)


def _mac(key: bytes, request: QueryRequest, last_id: str) -> bytes:
    message = "\x00".join(
        (request.tenant_id, request.aggregate_type, request.filter, "aggregate_id", last_id)
    )
    return hmac.new(key, message.encode(), hashlib.sha256).digest()[:_MAC_BYTES]


def _token(key: bytes, request: QueryRequest, last_id: str) -> str:
    raw = _mac(key, request, last_id) + last_id.encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(key: bytes, request: QueryRequest) -> str | None:
    token = request.page_token
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        last_id = raw[_MAC_BYTES:].decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgumentError("page token is malformed") from None
    if len(raw) <= _MAC_BYTES or len(token) > 256:
        raise InvalidArgumentError("page token is malformed")
    if not hmac.compare_digest(raw[:_MAC_BYTES], _mac(key, request, last_id)):
        raise InvalidArgumentError("page token does not belong to this query")
    return last_id


def plan_query(request: QueryRequest, *, limits: QueryLimits, token_key: bytes) -> QueryPlan:
    """Plan one page.

    Raises:
        InvalidArgumentError: a filter or order this version does not support, a bad
            page_size, or a tampered or foreign page token.
    """
    if len(request.filter) > limits.max_filter_chars:
        raise InvalidArgumentError(
            f"filter is {len(request.filter)} characters, more than the limit of "
            f"{limits.max_filter_chars}"
        )
    if request.filter.strip():
        raise InvalidArgumentError(f"{_NOT_YET}: filter {quote(request.filter)}")
    if request.order_by.strip() not in ("", "aggregate_id", "aggregate_id asc"):
        raise InvalidArgumentError(f"{_NOT_YET}: order_by {quote(request.order_by)}")
    size = request.page_size
    if size < 0 or size > limits.max_page_size:
        raise InvalidArgumentError(
            f"page_size {size} is out of range: 0 (the default, {limits.default_page_size}) "
            f"to {limits.max_page_size}"
        )
    size = size or limits.default_page_size
    after = _after(token_key, request)
    sql = f"SELECT {_COLUMNS} FROM views WHERE tenant_id = ? AND aggregate_type = ?"
    params: tuple[object, ...] = (request.tenant_id, request.aggregate_type)
    if after is not None:
        sql += " AND aggregate_id > ?"
        params += (after,)
    sql += " ORDER BY aggregate_id LIMIT ?"
    params += (size + 1,)
    return QueryPlan(sql, params, size, lambda last_id: _token(token_key, request, last_id))


def run_bounded(connection: sqlite3.Connection, plan: QueryPlan, *, max_steps: int) -> list[Row]:
    """Execute ``plan`` under a progress handler.

    Raises:
        QueryTooExpensiveError: the query needed more than ``max_steps`` SQLite steps.
    """
    budget = max(1, max_steps // 1000)
    calls = 0

    def progress() -> int:
        nonlocal calls
        calls += 1
        return 1 if calls > budget else 0

    connection.set_progress_handler(progress, 1000)
    try:
        rows = connection.execute(plan.sql, plan.params).fetchall()
    except sqlite3.OperationalError as exc:
        if calls > budget:
            raise QueryTooExpensiveError(
                f"the query needs more work than the limit of {max_steps} steps "
                "(query_max_sqlite_steps); narrow the filter or use an indexed field"
            ) from None
        raise exc
    finally:
        connection.set_progress_handler(None, 0)
    return [Row(*row) for row in rows]


def field_sql(path: str) -> str:
    """The SQL expression of a field path (``state.balance`` ->
    ``json_extract(state, '$.balance')``)."""
    checked = validate_index_path(path)
    return f"json_extract(state, '${checked[len('state') :]}')"


def index_statements(aggregate_type: str, paths: Sequence[str]) -> list[str]:
    """``CREATE INDEX IF NOT EXISTS`` statements for one type's ``indexes:``."""
    if not _TYPE_NAME.fullmatch(aggregate_type):
        raise ValueError(f"aggregate type {aggregate_type!r} is not a valid type name")
    statements = []
    for path in paths:
        name = f"ix_{aggregate_type}_{validate_index_path(path)}".replace(".", "_")
        name = name.replace("-", "_")
        statements.append(
            f'CREATE INDEX IF NOT EXISTS "{name}" ON views '
            f"(tenant_id, {field_sql(path)}, aggregate_id) "
            f"WHERE aggregate_type = '{aggregate_type}'"
        )
    return statements


def validate_index_path(path: str) -> str:
    """A field path of an expression index: ``state.<key>[.<key>...]``.

    Raises:
        ValueError: anything else, with a clear message.
    """
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        raise ValueError(
            f"index path {quote(path)} is not a field path like state.balance "
            "(state. then keys of letters, digits and _)"
        )
    return path


def compile_predicate(filter_text: str, *, limits: QueryLimits) -> Callable[[ViewLike], bool]:
    """The filter as a predicate over one view in memory (the empty filter only).

    Raises:
        InvalidArgumentError: any other filter.
    """
    if filter_text.strip():
        raise InvalidArgumentError(f"{_NOT_YET}: filter {quote(filter_text)}")
    return lambda view: True
