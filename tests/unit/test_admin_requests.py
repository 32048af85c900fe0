"""The admin request parsers: every malformed body is an ``InvalidArgumentError`` whose
message quotes what the client sent in a few dozen characters at most."""

from __future__ import annotations

import json

import pytest

from aggregate.application.admin import parse_drain, parse_reload
from aggregate.domain.errors import InvalidArgumentError

HUGE = "x" * 60_000


def drain(body: bytes) -> str:
    with pytest.raises(InvalidArgumentError) as info:
        parse_drain(body, tenant_id=None, default_timeout_s=1.0)
    return info.value.message


@pytest.mark.parametrize(
    "body",
    [b"[" * 30_000, b'{"a":' * 5_000, b"[" * 5_000 + b"]" * 5_000],
    ids=["open-arrays", "open-objects", "closed-arrays"],
)
def test_deep_nesting_is_invalid_argument(body: bytes) -> None:
    assert "nests arrays or objects too deeply" in drain(body)
    with pytest.raises(InvalidArgumentError, match="too deeply"):
        parse_reload(body)
    with pytest.raises(InvalidArgumentError, match="too deeply"):
        parse_drain(body, tenant_id="acme", default_timeout_s=1.0)


def test_an_integer_past_the_digit_limit_is_invalid_argument() -> None:
    message = drain(b'{"tenant_id": "acme", "timeout_ms": ' + b"9" * 5_000 + b"}")
    assert message == "request body holds an integer of more than 4300 digits"


@pytest.mark.parametrize(
    "fields",
    [
        {"tenant_id": [HUGE] * 100},
        {"tenant_id": {"a": HUGE}},
        {"tenant_id": "acme", "timeout_ms": HUGE},
        {"tenant_id": "acme", "timeout_ms": 10**4_000},
        {"tenant_id": "acme", "timeout_ms": -(10**4_000)},
        {"tenant_id": "acme", HUGE: 1},
        {f"{HUGE[:50]}-{i}": 1 for i in range(1_000)},
    ],
)
def test_messages_quote_values_short(fields: dict[str, object]) -> None:
    message = drain(json.dumps(fields).encode())
    assert len(message) < 250, message
    assert "x" * 41 not in message
    assert "0" * 41 not in message


def test_unknown_fields_are_named_up_to_three() -> None:
    message = drain(json.dumps({f"f{i}": 1 for i in range(10)}).encode())
    assert message.startswith("unknown field(s) 'f0', 'f1', 'f2' and 7 more; allowed:")


def test_a_hosted_tenants_value_of_the_wrong_shape_is_quoted_short() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_reload(json.dumps({"hosted_tenants": HUGE}).encode())
    assert len(info.value.message) < 150
