"""How a view's fields read in memory, exactly as SQLite's JSON functions read them.

``json_extract`` gives integers within 64 bits exactly and every other number as a double,
and a string up to its first U+0000;
``json_type`` tells JSON null, true, false, numbers, text, arrays and objects apart. The
in-memory predicate and the sort keys of page tokens use these functions so that they agree
with the SQL to the bit.
"""

from __future__ import annotations

import math
from typing import Any, Final, Protocol

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""A path that leads nowhere in a state (absent key, or through a non-object)."""

RANK = {"missing": 0, "null": 1, "false": 2, "true": 3, "number": 4, "text": 5, "other": 6}
"""The ascending order of kinds in order_by: missing, null, false, true, numbers, strings,
then arrays and objects (which are all equal to one another)."""


class ViewLike(Protocol):
    """What the filter reads of a view."""

    @property
    def aggregate_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def updated_at(self) -> str: ...
    @property
    def state(self) -> dict[str, Any]: ...


def lookup(state: object, keys: tuple[str, ...]) -> object:
    """The value at ``keys`` in a parsed JSON state, or ``MISSING``."""
    value = state
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def kind(value: object) -> str:
    """The kind of a JSON value (a key of ``RANK``)."""
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    return "other"


def as_sqlite_text(value: str) -> str:
    """A JSON string as ``json_extract`` gives it: up to its first U+0000."""
    return value.split("\x00", 1)[0]


def as_sqlite_number(value: int | float) -> int | float:
    """A JSON number as ``json_extract`` gives it: an int within 64 bits, else a double
    (rounded to nearest, infinite beyond the range of doubles)."""
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return value
