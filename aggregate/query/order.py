"""order_by as SQL: the sort components, the ORDER BY clause and the keyset condition.

A state path sorts by two components, its kind's rank (missing, null, false, true, numbers,
strings, arrays and objects) and its value within numbers or strings (0 otherwise), so
that every component is a non-NULL SQLite value and "after the last row" is a plain
lexicographic comparison, the same in SQL and in Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aggregate.query.compile import field_sql, type_sql
from aggregate.query.values import RANK, as_sqlite_number, as_sqlite_text, kind, lookup

if TYPE_CHECKING:
    from aggregate.query.ast import OrderKey
    from aggregate.query.plan import Row

SortValue = int | float | str


@dataclass(frozen=True, slots=True)
class Component:
    """One column of the sort: its SQL expression, direction and what Python type it is."""

    sql: str
    descending: bool


def _rank_sql(key: OrderKey) -> str:
    t = type_sql(key.path)
    return (
        f"(CASE {t} WHEN '' THEN 0 WHEN 'null' THEN 1 WHEN 'false' THEN 2 WHEN 'true' THEN 3 "
        f"WHEN 'integer' THEN 4 WHEN 'real' THEN 4 WHEN 'text' THEN 5 ELSE 6 END)"
    )


def _value_sql(key: OrderKey) -> str:
    t = type_sql(key.path)
    return f"(CASE WHEN {t} IN ('integer', 'real', 'text') THEN {field_sql(key.path)} ELSE 0 END)"


def components(keys: tuple[OrderKey, ...]) -> list[Component]:
    """The sort components of an order, in order."""
    out: list[Component] = []
    for key in keys:
        if key.path.column != "state":
            out.append(Component(key.path.column, key.descending))
        else:
            out.append(Component(_rank_sql(key), key.descending))
            out.append(Component(_value_sql(key), key.descending))
    return out


def order_by_sql(comps: list[Component]) -> str:
    return ", ".join(f"{c.sql} {'DESC' if c.descending else 'ASC'}" for c in comps)


def after_sql(comps: list[Component], last: list[SortValue], params: list[object]) -> str:
    """The condition "strictly after ``last``" in the order of ``comps`` (keyset)."""
    alternatives = []
    for i, comp in enumerate(comps):
        terms = []
        for j in range(i):
            terms.append(f"{comps[j].sql} = ?")
            params.append(last[j])
        terms.append(f"{comp.sql} {'<' if comp.descending else '>'} ?")
        params.append(last[i])
        alternatives.append("(" + " AND ".join(terms) + ")")
    return "(" + " OR ".join(alternatives) + ")"


def sort_values(keys: tuple[OrderKey, ...], row: Row) -> list[SortValue]:
    """The values of a row's sort components, as SQLite computes them from the row."""
    state = None
    out: list[SortValue] = []
    for key in keys:
        if key.path.column != "state":
            out.append(getattr(row, key.path.column))
            continue
        if state is None:
            state = json.loads(row.state)
        value = lookup(state, key.path.keys)
        k = kind(value)
        out.append(RANK[k])
        if k == "number":
            assert isinstance(value, int | float)
            out.append(as_sqlite_number(value))
        elif k == "text":
            assert isinstance(value, str)
            out.append(as_sqlite_text(value))
        else:
            out.append(0)
    return out
