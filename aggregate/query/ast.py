"""The filter and order AST: plain frozen dataclasses, and their canonical text.

The canonical text (``render``) is what page tokens are bound to, so two spellings of one
filter (extra spaces, redundant parentheses) share their tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

COLUMNS = ("aggregate_id", "version", "updated_at")
"""The paths that name a column of the view rather than a key of its state."""

Value = int | float | str | bool | None
"""A literal: JSON's scalars. Integers are within 64 bits (larger ones become floats)."""


@dataclass(frozen=True, slots=True)
class Path:
    """``aggregate_id``, ``version``, ``updated_at`` or ``state.<key>[.<key>...]``; for a
    state path ``keys`` holds the keys after ``state``, for a column it is empty."""

    column: str  # one of COLUMNS, or "state"
    keys: tuple[str, ...] = ()

    def text(self) -> str:
        return ".".join((self.column, *self.keys))


@dataclass(frozen=True, slots=True)
class Comparison:
    path: Path
    op: str  # = != < <= > >=
    value: Value


@dataclass(frozen=True, slots=True)
class Presence:
    """``path:*``: the field exists (a JSON null counts as present)."""

    path: Path


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Node


@dataclass(frozen=True, slots=True)
class Everything:
    """The empty filter: every view matches."""


Node = Comparison | Presence | And | Or | Not | Everything


@dataclass(frozen=True, slots=True)
class OrderKey:
    path: Path
    descending: bool = False


def render_value(value: Value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


def render(node: Node) -> str:
    """The canonical text of a filter: fully parenthesised compound terms."""
    if isinstance(node, Everything):
        return ""
    if isinstance(node, Comparison):
        return f"{node.path.text()} {node.op} {render_value(node.value)}"
    if isinstance(node, Presence):
        return f"{node.path.text()}:*"
    if isinstance(node, Not):
        return f"NOT ({render(node.item)})"
    joiner = " AND " if isinstance(node, And) else " OR "
    return joiner.join(f"({render(item)})" for item in node.items)


def render_order(keys: tuple[OrderKey, ...]) -> str:
    return ", ".join(f"{k.path.text()}{' desc' if k.descending else ''}" for k in keys)
