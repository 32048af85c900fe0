"""JSON from clients, decoded once where it enters, with bounds (STYLE 21).

``json.loads`` alone accepts what later fails far from the request: nesting that overflows
the parser (``RecursionError``) or a program's interpreter, lone surrogates (``"\\ud800"``:
text no encoder can write back), integers too long for Python's own int/str conversion
(4,300 digits) and the literals ``NaN``, ``Infinity`` (and ``1e999``, which becomes
``inf``), none of which is JSON a program can return. ``loads_json`` refuses each with an
``InvalidArgumentError`` that says what and where, before any program runs.

The stdlib parser does the parsing (its ``parse_int``, ``parse_float`` and
``parse_constant`` hooks refuse bad numbers as they are read); a walk over the result checks
depth and strings, and is skipped when the text cannot hold a problem (fewer brackets than
the depth limit, no ``\\u`` escape of a surrogate), which is the case for typical commands.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from aggregate.domain.errors import InvalidArgumentError, quote

DEFAULT_MAX_DEPTH = 64
"""Default nesting limit of arrays and objects: the programs' own input cap
(``ProgramLimits.max_input_depth``), so a command a program would refuse is refused here."""
DEFAULT_MAX_INT_DIGITS = 100
"""Default limit on the digits of one integer: 128-bit values need 39, amounts in minor
units far fewer; longer ones are almost surely an attack on int/str conversion (quadratic
in the digits, refused by Python past 4,300)."""
MAX_DEPTH_LIMIT = 512
"""The highest depth limit that can be configured: well below the nesting at which the
stdlib parser gives up (about 1,000 levels, less on a deep call stack)."""
MAX_INT_DIGITS_LIMIT = 4300
"""The highest digit limit that can be configured: Python's own conversion limit."""

_RAW_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_MAX_PATH_CHARS = 60
_CONTAINERS = (dict, list)


class _Refused(Exception):
    """A number hook's refusal, carried out of ``json`` to ``loads_json``."""


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"holds {name}, which is not a JSON number: numbers must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"holds the number {quote(text, 20)}, too large for a 64-bit float")
    return value


_FAST = json.JSONDecoder(parse_float=_finite_float, parse_constant=_refuse_constant)
"""For texts with no run of digits longer than the limit: no integer can be too long, and
the stdlib's own integer conversion (no Python call per integer) is used."""
_BOUNDED: dict[int, tuple[bytes, json.JSONDecoder]] = {}
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)


def _decoder(text: str, max_int_digits: int) -> json.JSONDecoder:
    if len(text) <= max_int_digits:
        return _FAST
    entry = _BOUNDED.get(max_int_digits)
    if entry is None:

        def bounded_int(text: str) -> int:
            digits = len(text) - (text[0] == "-")
            if digits > max_int_digits:
                raise _Refused(
                    f"holds an integer of {digits} digits ({quote(text, 20)}); at most "
                    f"{max_int_digits} digits are accepted (max_json_int_digits)"
                )
            return int(text)

        entry = _BOUNDED[max_int_digits] = (
            b"0" * (max_int_digits + 1),
            json.JSONDecoder(
                parse_int=bounded_int, parse_float=_finite_float, parse_constant=_refuse_constant
            ),
        )
    # A run of more digits than the limit, found in C (a regular expression backtracks).
    long_run, bounded = entry
    return bounded if long_run in text.encode().translate(_DIGITS_AS_ZERO) else _FAST


def _path(parts: list[str | int]) -> str:
    text = "$" + "".join(f"[{p}]" if isinstance(p, int) else f"[{quote(p, 20)}]" for p in parts)
    return text if len(text) <= _MAX_PATH_CHARS else f"{text[:_MAX_PATH_CHARS]}…"


def _deeper_than(value: Any, max_depth: int) -> bool:
    """True when arrays and objects nest deeper than ``max_depth`` in ``value``: one level
    of containers at a time (no paths: the cheap test of the common case)."""
    level = [value] if type(value) in _CONTAINERS else []
    for _ in range(max_depth):
        if not level:
            return False
        level = [
            child
            for item in level
            for child in (item.values() if type(item) is dict else item)
            if type(child) in _CONTAINERS
        ]
    return bool(level)


def _walk_problem(value: Any, max_depth: int, surrogates: bool) -> str | None:
    """What is wrong inside a decoded value (too deep, a lone surrogate), with its path;
    None when nothing is. Iterative: the value may nest as deep as the parser allowed."""
    # (value, depth of containers down to it, path) ; paths are built only for containers.
    stack: list[tuple[Any, int, list[str | int]]] = [(value, 0, [])]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict):
            if depth == max_depth:
                return f"nests deeper than {max_depth} levels at {_path(path)} (max_json_depth)"
            for key, child in item.items():
                if surrogates and _RAW_SURROGATE.search(key):
                    return f"has a lone surrogate in the key {_path([*path, key])}"
                if isinstance(child, dict | list):
                    stack.append((child, depth + 1, [*path, key]))
                elif surrogates and isinstance(child, str) and _RAW_SURROGATE.search(child):
                    return f"has a lone surrogate in the string at {_path([*path, key])}"
        elif isinstance(item, list):
            if depth == max_depth:
                return f"nests deeper than {max_depth} levels at {_path(path)} (max_json_depth)"
            for index, child in enumerate(item):
                if isinstance(child, dict | list):
                    stack.append((child, depth + 1, [*path, index]))
                elif surrogates and isinstance(child, str) and _RAW_SURROGATE.search(child):
                    return f"has a lone surrogate in the string at {_path([*path, index])}"
        elif surrogates and isinstance(item, str) and _RAW_SURROGATE.search(item):
            return "is a string with a lone surrogate"
    return None


def loads_json(data: str | bytes, *, what: str, max_depth: int, max_int_digits: int) -> Any:
    """Decode client JSON, refusing what no later step could handle.

    ``what`` names the input in messages (``payload_json``, ``request body``). Bytes must be
    UTF-8. At most ``max_depth`` arrays and objects nest; integers have at most
    ``max_int_digits`` digits; numbers are finite; strings and keys are valid Unicode.

    Raises:
        InvalidArgumentError: naming the problem and where it is (a position or a path).
    """
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgumentError(
                f"{what} is not valid UTF-8 (byte {exc.start}): send JSON text in UTF-8"
            ) from None
    else:
        text = data
    if not text.isascii():
        raw = _RAW_SURROGATE.search(text)
        if raw is not None:
            raise InvalidArgumentError(
                f"{what} has a lone surrogate at character {raw.start()}: text must be "
                "valid Unicode"
            )
    try:
        value = _decoder(text, max_int_digits).decode(text)
    except _Refused as exc:
        raise InvalidArgumentError(f"{what} {exc}") from None
    except RecursionError:
        raise InvalidArgumentError(
            f"{what} nests deeper than {max_depth} levels of arrays and objects (max_json_depth)"
        ) from None
    except ValueError as exc:  # json.JSONDecodeError: its message has line, column, position
        raise InvalidArgumentError(f"{what} is not valid JSON: {exc}") from None
    deep = text.count("[") + text.count("{") > max_depth and _deeper_than(value, max_depth)
    escaped = "\\u" in text and _ESCAPED_SURROGATE.search(text) is not None
    if deep or escaped:
        problem = _walk_problem(value, max_depth, escaped)
        if problem is not None:
            raise InvalidArgumentError(f"{what} {problem}")
    return value
