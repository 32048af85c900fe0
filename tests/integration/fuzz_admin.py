"""Hypothesis strategies of the fuzz suite for the admin HTTP API, and a raw HTTP/1.1
client (bytes on a socket: paths and headers no library would send).

Each case carries the HTTP codes it deserves. Hostile path segments and bodies deserve a
4xx with a short JSON reason; a tenant segment that is not a valid tenant id (``%2F``
decoded into a slash included) must never be routed to another endpoint or tenant: the
sentinel tenant, named by every such path, must still be accepting afterwards.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from dataclasses import dataclass

from hypothesis import strategies as st

TOKEN = "fuzz-admin-token"
SENTINEL = "gamma"
"""A tenant that no well-formed request drains: hostile paths name it (``gamma%2fdrain``)."""
POOL = ("adm-a", "adm-b")
"""Tenants that well-formed drains may drain."""
MAX_BODY = 64 * 1024
REFUSED = frozenset({400, 404})
BAD_BODY = frozenset({400, 413})


@dataclass(frozen=True)
class HttpCase:
    label: str
    method: str
    path: bytes
    body: bytes
    allowed: frozenset[int]
    token: str | None = TOKEN
    extra_headers: tuple[bytes, ...] = ()
    raw_request: bytes | None = None  # sent as is (protocol-level cases)
    protocol_level: bool = False  # refused by the HTTP server itself: no JSON reason owed

    def request_bytes(self, host: str) -> bytes:
        if self.raw_request is not None:
            return self.raw_request
        lines = [
            self.method.encode() + b" " + self.path + b" HTTP/1.1",
            b"Host: " + host.encode(),
            b"Connection: close",
            b"Content-Type: application/json",
            b"Content-Length: " + str(len(self.body)).encode(),
        ]
        if self.token is not None:
            lines.append(b"Authorization: Bearer " + self.token.encode())
        lines.extend(self.extra_headers)
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


@dataclass
class HttpAnswer:
    status: int | None  # None: the server closed without answering
    content_type: str
    body: bytes


def send_raw(address: tuple[str, int], data: bytes, timeout: float = 15.0) -> HttpAnswer:
    """Write ``data`` on a new connection and read one HTTP response."""
    with socket.create_connection(address, timeout=timeout) as sock:
        # The server may refuse before it has read everything: read its answer anyway.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            body = response.read()
        except (http.client.HTTPException, OSError):
            return HttpAnswer(None, "", b"")
        return HttpAnswer(response.status, response.getheader("Content-Type") or "", body)


def error_reason(answer: HttpAnswer) -> str | None:
    """The ``{"error": ...}`` of a JSON answer, or None when there is none."""
    if "json" not in answer.content_type:
        return None
    try:
        value = json.loads(answer.body)
    except ValueError:
        return None
    reason = value.get("error") if isinstance(value, dict) else None
    return reason if isinstance(reason, str) else None


# --- paths ----------------------------------------------------------------------------------

_ENDPOINTS = (("GET", "status"), ("GET", "ready"), ("POST", "drain"))
_BAD_ESCAPES = ["%", "%z", "%zz", "%g0", "%C0%AF", "%ff", "%00", "%0a", "%2e%2e", "%252f", "%2F%2F"]


def _segment_cases() -> st.SearchStrategy[tuple[str, bytes]]:
    """Tenant path segments that are not valid tenant ids, all naming the sentinel."""
    slash = st.builds(
        lambda esc, tail: (f"{esc} before {tail}", f"{SENTINEL}{esc}{tail}".encode()),
        st.sampled_from(["%2f", "%2F", "%5c", "%2f%2e%2e%2f"]),
        st.sampled_from(["drain", "status", "ready", "x", ""]),
    )
    escape = st.builds(
        lambda esc, at_end: (
            f"bad escape {esc}",
            (SENTINEL + esc if at_end else esc + SENTINEL).encode(),
        ),
        st.sampled_from(_BAD_ESCAPES),
        st.booleans(),
    )
    raw = st.builds(  # not a valid request target: hypercorn (h11) refuses it itself
        lambda b: (f"raw bytes {b[:12]!r}", SENTINEL.encode() + b),
        st.binary(min_size=1, max_size=12).filter(lambda b: any(x >= 0x80 for x in b)),
    )
    odd = st.sampled_from(
        [
            ("dot", f"{SENTINEL}.x"),
            ("star", "*"),
            ("gt", ">"),
            ("65 chars", "g" * 65),
            ("10k chars", "g" * 10_000),
            ("dot-dot", ".."),
            ("space", f"{SENTINEL}%20"),
        ]
    ).map(lambda pair: (pair[0], pair[1].encode()))
    return st.one_of(slash, escape, raw, odd)


@st.composite
def path_cases(draw: st.DrawFn) -> HttpCase:
    """A tenant endpoint with a hostile tenant segment: 400 or 404, never routed."""
    label, segment = draw(_segment_cases())
    method, endpoint = draw(st.sampled_from(_ENDPOINTS))
    body = b'{"timeout_ms": 0}' if method == "POST" else b""
    path = b"/admin/tenant/" + segment + b"/" + endpoint.encode()
    return HttpCase(
        f"{method} tenant segment {label} /{endpoint}",
        method,
        path,
        body,
        REFUSED,
        protocol_level=not path.isascii(),
    )


# --- bodies ---------------------------------------------------------------------------------


def _nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "open arrays":
        return b"[" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


_HOSTILE_BODIES = st.one_of(
    st.builds(
        lambda depth, kind: (f"{kind} nested {depth} deep", _nested(depth, kind)),
        st.sampled_from([1_000, 5_000, 10_000, 30_000]) | st.integers(500, 12_000),
        st.sampled_from(["array", "open arrays", "object"]),
    ),
    st.sampled_from(
        [
            ("invalid UTF-8", b'{"tenant_id": "\xff\xfe"}'),
            ("lone surrogate", b'{"tenant_id": "\\ud800"}'),
            ("huge timeout", b'{"tenant_id": "adm-a", "timeout_ms": 1' + b"0" * 5000 + b"}"),
            ("NaN timeout", b'{"tenant_id": "adm-a", "timeout_ms": NaN}'),
            ("float timeout", b'{"tenant_id": "adm-a", "timeout_ms": 1e999}'),
            ("negative timeout", b'{"tenant_id": "adm-a", "timeout_ms": -1}'),
            ("not JSON", b"{not json"),
            ("a list", b"[]"),
            ("a string", b'"adm-a"'),
            ("unknown field", b'{"tenant_id": "adm-a", "x": 1}'),
            ("tenant not a string", b'{"tenant_id": ["adm-a"]}'),
            ("tenant echo", b'{"tenant_id": "' + b"e" * 60_000 + b'"}'),
            ("hosted_tenants echo", b'{"hosted_tenants": "' + b"h" * 60_000 + b'"}'),
            ("hosted_tenants bad", b'{"hosted_tenants": ["a.b"]}'),
            ("placement bad", b'{"placement": {"x": 1}}'),
            ("both fields", b'{"hosted_tenants": null, "placement": {}}'),
            ("over 64 KiB", b'{"tenant_id": "' + b"o" * MAX_BODY + b'"}'),
            ("whitespace over 64 KiB", b" " * (MAX_BODY + 1)),
        ]
    ),
)


@st.composite
def body_cases(draw: st.DrawFn) -> HttpCase:
    """A hostile body on one of the endpoints that read one: 400 (413 when too large)."""
    label, body = draw(_HOSTILE_BODIES)
    target = draw(
        st.sampled_from(["/admin/drain", "/admin/reload", f"/admin/tenant/{POOL[0]}/drain"])
    )
    if target.startswith("/admin/tenant/") and body.strip() in (b"", b"{}"):
        body = b"[]"  # an empty body is a valid tenant drain
    return HttpCase(f"POST {target} with {label}", "POST", target.encode(), body, BAD_BODY)


@st.composite
def valid_cases(draw: st.DrawFn) -> HttpCase:
    """Well-formed admin requests on the pool tenants (the control of this class)."""
    tenant = draw(st.sampled_from(POOL))
    method, endpoint = draw(st.sampled_from(_ENDPOINTS))
    if method == "GET":
        allowed = frozenset({200}) if endpoint == "status" else frozenset({200, 503})
        return HttpCase(
            f"GET {endpoint} of {tenant}",
            "GET",
            f"/admin/tenant/{tenant}/{endpoint}".encode(),
            b"",
            allowed,
        )
    body = json.dumps({"timeout_ms": draw(st.integers(0, 100))}).encode()
    return HttpCase(
        f"drain {tenant}",
        "POST",
        f"/admin/tenant/{tenant}/drain".encode(),
        body,
        frozenset({200, 202}),
    )


def _protocol(label: str, raw: bytes) -> HttpCase:
    return HttpCase(
        label,
        "",
        b"",
        b"",
        frozenset({400, 405, 413, 414, 431, 505}),
        raw_request=raw,
        protocol_level=True,
    )


def protocol_cases() -> st.SearchStrategy[HttpCase]:
    """HTTP/1.1 the server must refuse at the protocol level: a 4xx, never a 500."""
    head = b"POST /admin/drain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    return st.one_of(
        st.sampled_from(
            [
                _protocol("Content-Length abc", head + auth + b"Content-Length: abc\r\n\r\n{}"),
                _protocol("Content-Length -1", head + auth + b"Content-Length: -1\r\n\r\n{}"),
                _protocol(
                    "two Content-Lengths",
                    head + auth + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
                ),
                _protocol(
                    "Content-Length and chunked",
                    head + auth + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}\r\n",
                ),
                _protocol(
                    "bad chunk size",
                    head + auth + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
                ),
                _protocol(
                    "header of 100 KiB", head + auth + b"X-Big: " + b"b" * 100_000 + b"\r\n\r\n"
                ),
                _protocol(
                    "1000 headers",
                    head + auth + b"".join(b"X-H%d: v\r\n" % i for i in range(1000)) + b"\r\n",
                ),
                _protocol("bad request line", b"GARBAGE\r\n\r\n"),
                _protocol("no Host", b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"),
                _protocol("header without colon", head + b"NoColonHere\r\n\r\n"),
                _protocol(
                    "path of 100 KiB", b"GET /" + b"p" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
                ),
            ]
        ),
        st.binary(min_size=1, max_size=200)
        .filter(lambda b: not b.startswith((b"GET ", b"POST ", b"HEAD ")))
        .map(lambda b: _protocol(f"request line {b[:16]!r}", b + b"\r\n\r\n")),
    )


# --- the triggers the issue reports, always run (explicit examples) --------------------------


def issue_body_cases() -> list[HttpCase]:
    """``[`` x 30000 and ``{"a":`` x 5000 (under 64 KiB) on the three endpoints with bodies."""
    cases = []
    for target in ("/admin/drain", f"/admin/tenant/{POOL[0]}/drain", "/admin/reload"):
        for label, body in (("[ x 30000", b"[" * 30_000), ('{"a": x 5000', b'{"a":' * 5_000)):
            cases.append(
                HttpCase(f"POST {target} with {label}", "POST", target.encode(), body, BAD_BODY)
            )
    return cases


def issue_path_cases() -> list[HttpCase]:
    """``POST /admin/tenant/gamma%2fdrain`` once drained gamma."""
    return [
        HttpCase(
            "POST tenant segment gamma%2fdrain",
            "POST",
            f"/admin/tenant/{SENTINEL}%2fdrain".encode(),
            b"",
            REFUSED,
        ),
        HttpCase(
            "GET tenant segment gamma%2Fstatus",
            "GET",
            f"/admin/tenant/{SENTINEL}%2Fstatus".encode(),
            b"",
            REFUSED,
        ),
    ]
