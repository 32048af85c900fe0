"""A filter as a Python predicate on one view in memory (the watch filters changes with it).

The semantics are those of the SQL of ``compile``: a comparison holds only when the field
holds a value of the literal's kind (numbers with numbers, strings with strings), numbers
read as SQLite's JSON reads them, strings compare by code point (which is UTF-8 byte order,
SQLite's BINARY collation).
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

from aggregate.query.ast import And, Comparison, Everything, Node, Not, Or, Presence
from aggregate.query.parse import parse_filter
from aggregate.query.values import (
    MISSING,
    ViewLike,
    as_sqlite_number,
    as_sqlite_text,
    kind,
    lookup,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from aggregate.query.plan import QueryLimits

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _field(view: ViewLike, node: Comparison | Presence) -> object:
    if node.path.column != "state":
        return getattr(view, node.path.column)
    return lookup(view.state, node.path.keys)


def evaluate(node: Node, view: ViewLike) -> bool:
    """Whether ``view`` matches the filter ``node``."""
    if isinstance(node, Everything):
        return True
    if isinstance(node, And):
        return all(evaluate(item, view) for item in node.items)
    if isinstance(node, Or):
        return any(evaluate(item, view) for item in node.items)
    if isinstance(node, Not):
        return not evaluate(node.item, view)
    value = _field(view, node)
    if isinstance(node, Presence):
        return value is not MISSING
    literal = node.value
    if literal is None:
        return value is None if node.op == "=" else value is not MISSING and value is not None
    if isinstance(literal, bool):
        if kind(value) not in ("true", "false"):
            return False
        return (value is literal) == (node.op == "=")
    wanted = "text" if isinstance(literal, str) else "number"
    if kind(value) != wanted:
        return False
    if wanted == "number":
        assert isinstance(value, int | float)
        value = as_sqlite_number(value)
    else:
        assert isinstance(value, str)
        value = as_sqlite_text(value)
    return _OPS[node.op](value, literal)


def compile_predicate(filter_text: str, *, limits: QueryLimits) -> Callable[[ViewLike], bool]:
    """The filter as a predicate on a view (``ViewLike``: aggregate_id, version,
    updated_at, state as parsed JSON), with exactly the semantics of the SQL.

    Raises:
        InvalidArgumentError: the filter is invalid (as for a query).
    """
    node = parse_filter(filter_text, limits)
    return lambda view: evaluate(node, view)
