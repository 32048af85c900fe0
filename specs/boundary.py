"""What a client's text is, written plainly: the ids and payloads the service must take.

The model of the request boundary (``aggregate.adapters.grpc.convert`` and the domain checks
it calls). ``request`` turns the text fields of a ``SubmitCommandRequest`` into the values
the model of the command path works on, or says the request must be refused. No regular
expressions, no shortcuts: each rule reads as it is written in ``specs/INVARIANTS.md``.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

HEX_DIGITS = "0123456789abcdefABCDEF"
ID_GROUPS = (8, 4, 4, 4, 12)
MAX_DEPTH = 64
"""The service's default ``max_json_depth``: arrays and objects nested at most this deep."""
MAX_INT_DIGITS = 100
"""The service's default ``max_json_int_digits``."""


def model_id(text: str) -> uuid.UUID | None:
    """The UUID ``text`` names: five groups of 8, 4, 4, 4 and 12 hex digits, either case,
    joined by dashes; None for any other text."""
    groups = text.split("-")
    if len(groups) != len(ID_GROUPS):
        return None
    for group, size in zip(groups, ID_GROUPS, strict=True):
        if len(group) != size:
            return None
        for char in group:
            if char not in HEX_DIGITS:
                return None
    return uuid.UUID(text)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)


def _acceptable(value: Any) -> bool:
    """Every part of a decoded value is one the service takes."""
    if isinstance(value, dict):
        return all(not _has_surrogate(k) and _acceptable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_acceptable(v) for v in value)
    if isinstance(value, str):
        return not _has_surrogate(value)
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return len(str(abs(value))) <= MAX_INT_DIGITS
    return isinstance(value, float) and math.isfinite(value)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def model_payload(text: str) -> dict[str, Any] | None:
    """The command ``text`` is: a JSON object with a non-empty string ``type``, nested at
    most ``MAX_DEPTH`` deep, integers of at most ``MAX_INT_DIGITS`` digits, finite numbers
    and no lone surrogate in any string; None when the service must refuse it."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or _depth(value) > MAX_DEPTH or not _acceptable(value):
        return None
    kind = value.get("type")
    if not isinstance(kind, str) or not kind:
        return None
    return value


def request(
    aggregate_id: str, command_id: str, payload_json: str
) -> tuple[uuid.UUID, uuid.UUID, dict[str, Any]] | None:
    """(aggregate id, command id, payload) of a request's text fields, or None when the
    service must refuse the request (``InvalidArgumentError``) before any program runs."""
    aggregate = model_id(aggregate_id)
    command = model_id(command_id)
    payload = model_payload(payload_json)
    if aggregate is None or command is None or payload is None:
        return None
    return aggregate, command, payload
