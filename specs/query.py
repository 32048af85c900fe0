"""The read side's query semantics, as a plain evaluator over the model's views.

Obviously correct, no tricks: the filter's AST (from the product's grammar) is evaluated
by the rules below, the order sorts by a comparison function, and ``query`` cuts the sorted
answer into pages, which is exactly what a client gets by following page tokens.

Rules (``docs/queries.md`` says them for users):

- A field is ``aggregate_id``, ``version``, ``updated_at`` or a state path; a state path
  is *missing* when a key is absent or a value on the way is not an object.
- A number is read as SQLite's JSON reads it: an integer within 64 bits exactly, any other
  number as the nearest double. Numbers compare with numbers (integers and doubles exactly).
- A string in a state is read up to its first U+0000 (as SQLite's ``json_extract`` reads
  it); strings compare by code point.
- A comparison with a number (a string) holds only when the field holds a number (a
  string), ``!=`` included: ``state.x != 5`` is false when x is missing or a string.
- ``= true`` / ``= false`` hold for that boolean; ``!= true`` holds for false only, and the
  other way round. ``= null`` holds for JSON null only (not missing); ``!= null`` holds for
  every present value but null.
- ``path:*`` holds when the field is present (a null is present).
- AND, OR, NOT are two-valued: NOT holds exactly when its operand does not.
- Order: per key, ascending is missing < null < false < true < numbers < strings <
  arrays and objects (all equal among themselves); strings by code point; ``desc`` reverses
  a key; ``aggregate_id`` ascending breaks every tie unless the order names it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from aggregate.query.ast import And, Comparison, Everything, Node, Not, Or, OrderKey, Presence
from aggregate.query.parse import parse_filter, parse_order
from aggregate.query.plan import QueryLimits, QueryRequest

LIMITS = QueryLimits()


@dataclass(frozen=True)
class ModelView:
    """The latest view of one aggregate."""

    aggregate_id: str
    version: int
    position: int
    updated_at: str
    state: dict[str, Any]


_ABSENT = object()


def field_value(view: ModelView, node: Comparison | Presence | OrderKey) -> Any:
    path = node.path
    if path.column != "state":
        return getattr(view, path.column)
    value: Any = view.state
    for key in path.keys:
        if type(value) is not dict or key not in value:
            return _ABSENT
        value = value[key]
    return value


def is_number(value: Any) -> bool:
    return type(value) in (int, float)


def number(value: int | float) -> int | float:
    if type(value) is int and not -(2**63) <= value < 2**63:
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return value


def text(value: str) -> str:
    return value.split("\x00", 1)[0]


def holds(node: Node, view: ModelView) -> bool:
    if isinstance(node, Everything):
        return True
    if isinstance(node, And):
        return all(holds(n, view) for n in node.items)
    if isinstance(node, Or):
        return any(holds(n, view) for n in node.items)
    if isinstance(node, Not):
        return not holds(node.item, view)
    value = field_value(view, node)
    if isinstance(node, Presence):
        return value is not _ABSENT
    literal, op = node.value, node.op
    if literal is None:
        return value is None if op == "=" else (value is not None and value is not _ABSENT)
    if type(literal) is bool:
        if type(value) is not bool:
            return False
        return value == literal if op == "=" else value != literal
    if type(literal) is str:
        if type(value) is not str:
            return False
        value = text(value)
    elif not is_number(value):
        return False
    else:
        value = number(value)
    outcome: bool = {
        "=": value == literal,
        "!=": value != literal,
        "<": value < literal,
        "<=": value <= literal,
        ">": value > literal,
        ">=": value >= literal,
    }[op]
    return outcome


def matches(filter_text: str, view: ModelView) -> bool:
    """Whether ``view`` is in the answer of ``filter_text``."""
    return holds(parse_filter(filter_text, LIMITS), view)


def _rank(value: Any) -> tuple[int, Any]:
    if value is _ABSENT:
        return (0, 0)
    if value is None:
        return (1, 0)
    if value is False:
        return (2, 0)
    if value is True:
        return (3, 0)
    if is_number(value):
        return (4, number(value))
    if type(value) is str:
        return (5, text(value))
    return (6, 0)


def sort_key(order_by: str, view: ModelView) -> list[tuple[bool, tuple[int, Any]]]:
    """Per order key: (descending, (rank, value)); compared with ``compare``."""
    return [
        (key.descending, _rank(field_value(view, key))) for key in parse_order(order_by, LIMITS)
    ]


def compare(a: list[tuple[bool, tuple[int, Any]]], b: list[tuple[bool, tuple[int, Any]]]) -> int:
    for (descending, x), (_, y) in zip(a, b, strict=True):
        if x != y:
            less = x < y
            return (1 if less else -1) if descending else (-1 if less else 1)
    return 0


def query(views: list[ModelView], request: QueryRequest) -> list[list[ModelView]]:
    """Every page a client gets for ``request`` (its page_token ignored) by following the
    tokens from the first page; one empty page when nothing matches."""
    node = parse_filter(request.filter, LIMITS)
    size = request.page_size or LIMITS.default_page_size
    chosen = [v for v in views if holds(node, v)]

    def by_order(a: ModelView, b: ModelView) -> int:
        return compare(sort_key(request.order_by, a), sort_key(request.order_by, b))

    keyed = sorted(chosen, key=functools.cmp_to_key(by_order))
    pages = [keyed[i : i + size] for i in range(0, len(keyed), size)]
    return pages or [[]]
