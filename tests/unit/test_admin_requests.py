"""Admin request bodies: bounded JSON, tenant ids quoted in refusals."""

from __future__ import annotations

import pytest

from aggregate.application.admin import parse_drain, parse_json_object, parse_reload
from aggregate.domain.errors import InvalidArgumentError


def refusal(body: bytes) -> str:
    with pytest.raises(InvalidArgumentError) as caught:
        parse_json_object(body, allow_empty=False)
    assert len(caught.value.message) < 200, caught.value.message
    return caught.value.message


@pytest.mark.parametrize(
    "body", [b"[" * 30_000, b'{"a":' * 5_000, b'{"tenant_id": [[[[[[[[[[]]]]]]]]]]}']
)
def test_deep_bodies_are_refused_with_a_reason(body: bytes) -> None:
    assert refusal(body).startswith("request body nests deeper than 8 levels")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"timeout_ms": ' + b"9" * 21 + b"}", "integer of 21 digits"),
        (b'{"timeout_ms": NaN}', "holds NaN"),
        (b'{"tenant_id": "\\ud800"}', "lone surrogate"),
        (b'{"tenant_id": "\xff"}', "not valid UTF-8"),
    ],
)
def test_malformed_bodies_name_the_problem(body: bytes, expected: str) -> None:
    assert expected in refusal(body)


def test_a_drain_body_still_parses() -> None:
    request = parse_drain(
        b'{"tenant_id": "acme", "timeout_ms": 250}', tenant_id=None, default_timeout_s=1
    )
    assert (request.tenant_id, request.timeout_s) == ("acme", 0.25)


def test_refusals_quote_what_the_client_sent() -> None:
    huge = "t" * 10_000
    for body in (
        b'{"tenant_id": "' + huge.encode() + b'"}',
        b'{"tenant_id": ["' + huge.encode() + b'"]}',
        b'{"tenant_id": "acme", "timeout_ms": "' + huge.encode() + b'"}',
        b'{"' + huge.encode() + b'": 1, "tenant_id": "acme"}',
    ):
        with pytest.raises(InvalidArgumentError) as caught:
            parse_drain(body, tenant_id=None, default_timeout_s=1)
        assert len(caught.value.message) < 300, caught.value.message
    many = b"{" + b",".join(b'"k%d": 1' % n for n in range(1000)) + b"}"
    with pytest.raises(InvalidArgumentError) as caught:
        parse_reload(many)
    assert "and 990 more" in caught.value.message
