"""A filter AST compiled to a parameterised SQL condition over the ``views`` table.

Paths reach the SQL text only through ``field_sql`` (their keys are identifiers, checked by
the grammar); every literal is a parameter. Every condition is 0 or 1, never NULL, so NOT
means exactly "does not match" (a missing field included), as in the model.
"""

from __future__ import annotations

from aggregate.query.ast import And, Comparison, Everything, Node, Not, Or, Path, Presence, Value
from aggregate.query.parse import path_of

_NUMBER_TYPES = "('integer', 'real')"


def field_sql(path: str | Path) -> str:
    """The SQL expression of a field path: a column, or ``json_extract(state, '$.a.b')``.

    Expression indexes are built on exactly this text, so queries use them.

    Raises:
        InvalidArgumentError: the path is not a valid field (only for a ``str``).
    """
    if isinstance(path, str):
        path = path_of(path)
    if path.column != "state":
        return path.column
    return f"json_extract(state, '$.{'.'.join(path.keys)}')"


def type_sql(path: Path) -> str:
    """``json_type`` of a state path, '' when the path is missing (never NULL)."""
    return f"coalesce(json_type(state, '$.{'.'.join(path.keys)}'), '')"


def compile_filter(node: Node, params: list[object]) -> str:
    """The SQL condition of ``node``; its parameters are appended to ``params``."""
    if isinstance(node, Everything):
        return "1"
    if isinstance(node, And | Or):
        joiner = " AND " if isinstance(node, And) else " OR "
        return "(" + joiner.join(compile_filter(item, params) for item in node.items) + ")"
    if isinstance(node, Not):
        return f"(NOT {compile_filter(node.item, params)})"
    if isinstance(node, Presence):
        return "1" if node.path.column != "state" else f"({type_sql(node.path)} != '')"
    return _comparison(node, params)


def _comparison(node: Comparison, params: list[object]) -> str:
    path, op, value = node.path, node.op, node.value
    if path.column != "state":
        # columns are never NULL and their type is fixed (the grammar checked the literal)
        params.append(value)
        return f"({path.column} {op} ?)"
    jtype = type_sql(path)
    if value is None:
        return f"({jtype} = 'null')" if op == "=" else f"({jtype} NOT IN ('', 'null'))"
    if isinstance(value, bool):
        wanted = "true" if value else "false"
        other = "false" if value else "true"
        return f"({jtype} = '{wanted if op == '=' else other}')"
    params.append(value)
    types = _NUMBER_TYPES if _is_number(value) else "('text')"
    return f"({jtype} IN {types} AND {field_sql(path)} {op} ?)"


def _is_number(value: Value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
