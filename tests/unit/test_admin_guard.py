"""The admin server's checks before routing, as pure functions (the integration tests in
``tests/integration/test_admin_http_hostile.py`` send the same over real sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from aggregate.adapters.admin_guard import (
    MAX_REASON_CHARS,
    HttpLimits,
    Refusal,
    check_request,
    clip_reason,
    decode_path,
)


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b"/", "/"),
        (b"/admin/tenants", "/admin/tenants"),
        (b"/admin/tenant/ac%6De/status", "/admin/tenant/acme/status"),
        (b"/admin/tenant/%C3%A9/status", "/admin/tenant/\u00e9/status"),
        (b"/admin/tenant/\xc3\xa9/status", "/admin/tenant/\u00e9/status"),
        (b"/a%20b", "/a b"),
        (b"/a%25zz", "/a%zz"),
        (b"//x", "//x"),
    ],
)
def test_paths_decode_segment_by_segment(raw: bytes, path: str) -> None:
    assert decode_path(raw) == path


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"/admin/tenant/gamma%2fdrain", "'gamma%2fdrain' holds an encoded '/'"),
        (b"/a%2F", "encoded '/'"),
        (b"/a%zz", "'a%zz' has a malformed percent-escape"),
        (b"/a%4", "malformed percent-escape"),
        (b"/a%", "malformed percent-escape"),
        (b"/a%ff", "not UTF-8"),
        (b"/a%ED%A0%80", "not UTF-8"),  # an encoded lone surrogate
        (b"/a\xff", "not UTF-8"),
        (b"*", "must be a path"),
        (b"http://host/health", "must be a path"),
        (b"", "must be a path"),
    ],
)
def test_bad_paths_are_refused(raw: bytes, fragment: str) -> None:
    refused = decode_path(raw)
    assert isinstance(refused, Refusal)
    assert refused.status == 400
    assert fragment in refused.reason


def test_a_long_segment_is_quoted_short() -> None:
    refused = decode_path(b"/" + b"a" * 10_000 + b"%2F")
    assert isinstance(refused, Refusal)
    assert "(10003 characters)" in refused.reason
    assert len(refused.reason) < 200


def scope(**fields: Any) -> Any:
    base = {
        "type": "http",
        "http_version": "1.1",
        "raw_path": b"/health",
        "path": "/health",
        "query_string": b"",
        "headers": [(b"host", b"x")],
    }
    return base | fields


LIMITS = HttpLimits(max_header_bytes=1024, max_headers=10)


@pytest.mark.parametrize(
    ("fields", "status", "fragment"),
    [
        ({"http_version": "2.0"}, 505, "HTTP/1.1 only"),
        ({"http_version": "3"}, 505, "HTTP/1.1 only"),
        ({"headers": [(b"x", b"y")] * 11}, 431, "11 header fields; the limit is 10"),
        ({"raw_path": b"/" + b"a" * 1024}, 414, "1025 bytes; the limit is 1024"),
        ({"query_string": b"q" * 1020}, 414, "the limit is 1024"),
        ({"headers": [(b"x", b"y" * 1020)]}, 431, "target and headers are 1028 bytes"),
        ({"raw_path": b"/a%2Fb"}, 400, "encoded '/'"),
    ],
)
def test_requests_past_the_limits_are_refused(
    fields: dict[str, object], status: int, fragment: str
) -> None:
    refused = check_request(scope(**fields), LIMITS)
    assert isinstance(refused, Refusal)
    assert refused.status == status
    assert fragment in refused.reason


def test_a_request_within_the_limits_passes() -> None:
    assert check_request(scope(raw_path=b"/admin/tenant/ac%6De/ready"), LIMITS) is None
    assert check_request(scope(http_version="1.0", headers=[(b"x", b"y")] * 10), LIMITS) is None


def test_long_reasons_keep_their_start_and_their_advice() -> None:
    reason = "tenant id '" + "t" * 10_000 + "' is invalid: use 1-64 characters of A-Z a-z 0-9 _ -"
    clipped = clip_reason(reason)
    assert len(clipped) <= MAX_REASON_CHARS
    assert clipped.startswith("tenant id 'ttt")
    assert clipped.endswith("' is invalid: use 1-64 characters of A-Z a-z 0-9 _ -")
    assert "characters cut" in clipped
    assert clip_reason("short") == "short"
