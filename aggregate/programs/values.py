"""Checks on the JSON values that programs receive and return (DESIGN §7).

Programs see plain JSON: objects with string keys, arrays, strings, integers (exact, any
size), finite floats, booleans and null. Nesting is capped before a value is handed in
(deep values overflow native stacks in the interpreter and in JSON encoders) and checked on
the way out (a program must not build a state that the next call would refuse).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from aggregate.domain.errors import quote

if TYPE_CHECKING:
    from collections.abc import Iterable

_SCALARS = (str, int, bool, type(None))


def _key_text(key: object) -> str:
    return f"[{quote(key, 20)}]"


def _problem(value: Any, depth_left: int, max_depth: int, strict: bool) -> str | None:
    if isinstance(value, dict):
        if depth_left == 0:
            return f": nested deeper than {max_depth} levels"
        for key, item in value.items():
            if not isinstance(key, str):
                return f": has a non-string key {quote(key)}"
            if isinstance(item, dict | list) or strict:
                found = _problem(item, depth_left - 1, max_depth, strict)
                if found is not None:
                    return _key_text(key) + found
        return None
    if isinstance(value, list):
        if depth_left == 0:
            return f": nested deeper than {max_depth} levels"
        for index, item in enumerate(value):
            if isinstance(item, dict | list) or strict:
                found = _problem(item, depth_left - 1, max_depth, strict)
                if found is not None:
                    return _key_text(index) + found
        return None
    if not strict or isinstance(value, _SCALARS):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f": {value!r} is not a finite number"
    return f": {type(value).__name__} is not a JSON value"


def _too_deep_or_bad_key(value: Any, depth_left: int) -> bool:
    # The fast path of the non-strict check: no paths, no messages.
    items: Iterable[Any]
    if isinstance(value, dict):
        if depth_left == 0:
            return True
        for key in value:
            if type(key) is not str:
                return True
        items = value.values()
    elif isinstance(value, list):
        if depth_left == 0:
            return True
        items = value
    else:
        return False
    for item in items:
        if isinstance(item, dict | list) and _too_deep_or_bad_key(item, depth_left - 1):
            return True
    return False


def json_problem(value: Any, max_depth: int, *, strict: bool = False) -> str | None:
    """Why ``value`` may not be handed to or accepted from a program, or ``None`` if it may.

    Checks that dicts and lists nest at most ``max_depth`` levels and that dict keys are
    strings. With ``strict`` (values from Python code, which may hold anything) also that
    every leaf is a JSON scalar and floats are finite. The answer starts with the path of
    the offending part (``['a'][3]: nested deeper than 64 levels``).
    """
    if not strict and not _too_deep_or_bad_key(value, max_depth):
        return None
    found = _problem(value, max_depth, max_depth, strict)
    if found is None:
        return None
    return "value" + found


def json_copy(value: Any) -> Any:
    """A deep copy of a JSON value (faster than ``copy.deepcopy`` for plain JSON).

    Raises:
        ValueError, TypeError: ``value`` is not plain JSON (checked first with
            ``json_problem`` by callers that need a readable message).
    """
    return json.loads(json.dumps(value, allow_nan=False))
