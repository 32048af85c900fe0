"""Hostile input on the admin HTTP server: every client mistake is a 4xx with a short JSON
reason, nothing reaches the backend, and the server keeps serving.

Real hypercorn on loopback. Requests a client library would refuse to send (bad
Content-Length, raw non-ASCII targets, HTTP/2 prefaces) go out as raw bytes.
"""

from __future__ import annotations

import json

import h2.config
import h2.connection
import h11
import pytest
import trio

from aggregate.adapters.admin_guard import HttpLimits
from tests.integration.admin_harness import (
    AUTH,
    IO_TIMEOUT_S,
    TOKEN,
    FakeBackend,
    Reply,
    answering_connection,
    assert_serving,
    head,
    make_server,
    raw_request,
    read_reply,
    request,
    running,
)

MAX_REASON_CHARS = 340
"""Characters an error reason may take: advice and short quotes of the input, never the
whole input (the server clips at 300 plus a marker of what it cut)."""
MAX_ERROR_BODY = 2048
"""Bytes of an error body (JSON escapes of non-ASCII characters take up to 6 bytes)."""

BEARER = b"Authorization: Bearer " + TOKEN.encode()


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


def assert_refused(reply: Reply, status: int | tuple[int, ...], *fragments: str) -> str:
    """A refusal with one of ``status``, a short JSON ``{"error": reason}`` naming each of
    ``fragments``; returns the reason."""
    wanted = status if isinstance(status, tuple) else (status,)
    assert reply.status in wanted, (reply.status, reply.body[:200])
    assert reply.headers.get("content-type") == "application/json", reply.headers
    assert len(reply.body) <= MAX_ERROR_BODY, reply.body[:200]
    reason = json.loads(reply.body)["error"]
    assert isinstance(reason, str)
    assert len(reason) <= MAX_REASON_CHARS, reason
    for fragment in fragments:
        assert fragment in reason, reason
    return reason


# --- JSON bodies --------------------------------------------------------------------------

DEEP = {
    "open-arrays": b"[" * 30_000,
    "open-objects": b'{"a":' * 5_000,
    "closed-arrays": b"[" * 5_000 + b"]" * 5_000,
    "closed-objects": b'{"a":' * 3_000 + b"1" + b"}" * 3_000,
}
BODY_ROUTES = ["/admin/drain", "/admin/tenant/acme/drain", "/admin/reload"]


@pytest.mark.trio
@pytest.mark.parametrize("path", BODY_ROUTES)
@pytest.mark.parametrize("body", DEEP.values(), ids=DEEP.keys())
async def test_deeply_nested_json_is_400(backend: FakeBackend, path: str, body: bytes) -> None:
    async with running(make_server(backend)) as port:
        reply = await request(port, "POST", path, headers=AUTH, body=body)
        assert_refused(reply, 400, "nest")
        await assert_serving(port)
    assert backend.calls == []


@pytest.mark.trio
@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_an_integer_past_the_digit_limit_is_400(backend: FakeBackend, path: str) -> None:
    body = b'{"timeout_ms": ' + b"9" * 5_000 + b"}"
    async with running(make_server(backend)) as port:
        reply = await request(port, "POST", path, headers=AUTH, body=body)
        assert_refused(reply, 400, "digits")
        await assert_serving(port)
    assert backend.calls == []


# --- paths ------------------------------------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/admin/tenant/gamma%2fdrain"),
        ("POST", "/admin/tenant/gamma%2Fdrain"),
        ("GET", "/admin/tenant/gamma%2Fstatus"),
        ("GET", "/admin/tenant/acme%2F..%2Fglobex/status"),
        ("GET", "/admin%2Ftenants"),
        ("GET", "/health%2f"),
    ],
)
async def test_an_encoded_slash_never_separates_path_segments(
    backend: FakeBackend, method: str, target: str
) -> None:
    async with running(make_server(backend)) as port:
        reply = await request(port, method, target, headers=AUTH)
        assert_refused(reply, 400, "%2F")
    assert backend.calls == []


@pytest.mark.trio
async def test_percent_escapes_decode_within_their_segment(backend: FakeBackend) -> None:
    async with running(make_server(backend)) as port:
        same = await request(port, "GET", "/admin/tenant/ac%6De/status", headers=AUTH)
        assert same.status == 200
        dotted = await request(port, "GET", "/admin/tenant/ac%2Eme/status", headers=AUTH)
        assert_refused(dotted, 400, "tenant id 'ac.me' is invalid")
    assert backend.calls == [("tenant_status", "acme")]


@pytest.mark.trio
@pytest.mark.parametrize(
    ("target", "status", "fragment"),
    [
        (b"/admin/tenant/%zz/status", 400, "percent-escape"),
        (b"/admin/tenant/ab%4/status", 400, "percent-escape"),
        (b"/admin/tenants%", 400, "percent-escape"),
        (b"/admin/tenant/%ff/status", 400, "UTF-8"),
        (b"/admin/tenant/%c3%28/status", 400, "UTF-8"),
        (b"/admin/tenant/\xc3\xa9/status", 400, "malformed"),
        (b"/admin/tenant/a\x7fb/status", 400, "malformed"),
        (b"http://127.0.0.1/health", 400, "path"),
        (b"*", 400, "path"),
        (b"/" + b"a" * 10_000, 404, "(10001 characters); this server answers"),
        (b"/admin/tenant/" + b"t" * 10_000 + b"/status", 400, "use 1-64 characters"),
        (b"/" + b"a" * 20_000, (414, 431), "16384"),
    ],
)
async def test_bad_targets_are_refused_with_a_reason(
    backend: FakeBackend, target: bytes, status: int | tuple[int, ...], fragment: str
) -> None:
    async with running(make_server(backend)) as port:
        reply = await raw_request(port, head(b"GET", target, BEARER))
        assert_refused(reply, status, fragment)
        await assert_serving(port)
    assert backend.calls == []


# --- protocol: headers, Content-Length, bodies, methods ----------------------------------


@pytest.mark.trio
@pytest.mark.parametrize(
    ("data", "status", "fragment"),
    [
        (head(b"GET", b"/health", *(b"X-N%d: v" % i for i in range(150))), 431, "100"),
        (head(b"GET", b"/health", b"X-Big: " + b"v" * 6_000), 431, "4096"),
        (head(b"GET", b"/health", b"X-Big: " + b"v" * 200_000), 431, "4096"),
        (head(b"GET", b"/health", b"No colon here"), 400, "malformed"),
        (head(b"GET", b"/health", b"Bad Name: v"), 400, "malformed"),
        (head(b"POST", b"/admin/drain", BEARER, b"Content-Length: abc"), 400, "malformed"),
        (head(b"POST", b"/admin/drain", BEARER, b"Content-Length: -1"), 400, "malformed"),
        (
            head(b"POST", b"/admin/drain", BEARER, b"Content-Length: 5", body=b"{}"),
            400,
            "malformed",
        ),
        (
            head(b"POST", b"/admin/drain", BEARER, b"Content-Length: 99999999999"),
            413,
            "65536",
        ),
        (head(b"GET", b"/health HTTP/1.1 extra"), 400, "malformed"),
        (head(b"POST", b"/admin/drain", BEARER, b"Transfer-Encoding: gzip"), 501, "chunked"),
        (b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 505, "HTTP/1.1"),
    ],
)
async def test_protocol_errors_are_refused_with_a_reason(
    backend: FakeBackend, data: bytes, status: int, fragment: str
) -> None:
    limits = HttpLimits(max_header_bytes=4096)
    async with running(make_server(backend, limits=limits)) as port:
        reply = await raw_request(port, data)
        assert_refused(reply, status, fragment)
        await assert_serving(port)
    assert backend.calls == []


@pytest.mark.trio
async def test_a_chunked_body_over_the_limit_is_413(backend: FakeBackend) -> None:
    chunk = b"8000\r\n" + b" " * 0x8000 + b"\r\n"
    data = (
        b"POST /admin/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + BEARER
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk * 3
        + b"0\r\n\r\n"
    )
    async with running(make_server(backend)) as port:
        assert_refused(await raw_request(port, data), 413, "65536")
        await assert_serving(port)
    assert backend.calls == []


@pytest.mark.trio
async def test_a_body_slower_than_the_body_timeout_is_408(backend: FakeBackend) -> None:
    limits = HttpLimits(body_timeout_s=0.2)
    async with running(make_server(backend, limits=limits)) as port:
        with trio.fail_after(IO_TIMEOUT_S):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                data = head(b"POST", b"/admin/drain", BEARER, b"Content-Length: 100")
                await stream.send_all(data + b'{"tenant')
                # The rest never comes: the server gives up on the body by itself.
                assert_refused(await read_reply(stream, answering_connection()), 408, "body")
        await assert_serving(port)
    assert backend.calls == []


@pytest.mark.trio
@pytest.mark.parametrize(
    ("method", "target", "status", "fragment"),
    [
        (b"FOO", b"/admin/drain", 405, "FOO is not allowed on /admin/drain"),
        (b"DELETE", b"/admin/tenant/acme/status", 405, "use GET"),
        (b"F" * 10_000, b"/health", 405, "(10000 characters) is not allowed on /health"),
        (b"PUT", b"/" + b"p" * 10_000, 404, "(10001 characters); this server answers"),
    ],
)
async def test_unknown_methods_are_refused_with_a_short_reason(
    backend: FakeBackend, method: bytes, target: bytes, status: int, fragment: str
) -> None:
    async with running(make_server(backend)) as port:
        reply = await raw_request(port, head(method, target, BEARER))
        assert_refused(reply, status, fragment)
        await assert_serving(port)
    assert backend.calls == []


# --- HTTP/2 -------------------------------------------------------------------------------


def h2_request(path: bytes) -> bytes:
    """The client preface, SETTINGS and a HEADERS frame for ``GET path`` over HTTP/2."""
    config = h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    headers = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"127.0.0.1"),
        (b":path", path),
        (b"authorization", b"Bearer " + TOKEN.encode()),
    ]
    conn.send_headers(1, headers, end_stream=True)
    return conn.data_to_send()


@pytest.mark.trio
@pytest.mark.parametrize("path", [b"/health", b"/admin/tenant/\xc3\xa9/status"])
async def test_http2_is_refused_and_the_server_keeps_serving(
    backend: FakeBackend, path: bytes
) -> None:
    async with running(make_server(backend)) as port:
        with trio.fail_after(IO_TIMEOUT_S):
            # A keep-alive client connected before the HTTP/2 one, served after it.
            before = await trio.open_tcp_stream("127.0.0.1", port)
            async with before:
                conn = h11.Connection(h11.CLIENT)
                get = h11.Request(method="GET", target="/ready", headers=[("host", "x")])
                await before.send_all(conn.send(get) + conn.send(h11.EndOfMessage()))
                assert (await read_reply(before, conn)).status == 200
                conn.start_next_cycle()

                assert_refused(await raw_request(port, h2_request(path)), 505, "HTTP/1.1")

                await before.send_all(conn.send(get) + conn.send(h11.EndOfMessage()))
                assert (await read_reply(before, conn)).status == 200
        await assert_serving(port)
    assert backend.calls == []


@pytest.mark.trio
async def test_an_h2c_upgrade_is_answered_over_http1(backend: FakeBackend) -> None:
    data = (
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    async with running(make_server(backend)) as port:
        reply = await raw_request(port, data)
    assert reply.status == 200
    assert reply.json() == backend.health()


@pytest.mark.trio
@pytest.mark.parametrize("target", [b"/health", b"/admin/tenants", b"/nowhere"])
async def test_a_websocket_handshake_is_refused(backend: FakeBackend, target: bytes) -> None:
    data = head(
        b"GET",
        target,
        BEARER,
        b"Upgrade: websocket",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Version: 13",
    ).replace(b"Connection: close", b"Connection: Upgrade")
    async with running(make_server(backend)) as port:
        assert_refused(await raw_request(port, data), 400, "WebSocket")
        await assert_serving(port)
    assert backend.calls == []


# --- a sweep of the admin routes -------------------------------------------------------------

HUGE = "x" * 60_000


def body(value: object) -> bytes:
    return json.dumps(value).encode()


QUOTED: list[tuple[str, str, bytes | None]] = [
    # wrong types, huge strings, unknown fields, out-of-range numbers in JSON bodies
    ("POST", "/admin/drain", body({"tenant_id": [HUGE[:100]] * 500})),
    ("POST", "/admin/drain", body({"tenant_id": {"a": HUGE[:30_000]}})),
    ("POST", "/admin/drain", body({"tenant_id": None})),
    ("POST", "/admin/drain", body({"tenant_id": 1e308})),
    ("POST", "/admin/drain", body({"tenant_id": "\ud800"})),
    ("POST", "/admin/drain", body({"tenant_id": "acme", "timeout_ms": HUGE})),
    ("POST", "/admin/drain", body({"tenant_id": "acme", "timeout_ms": 10**4_000})),
    ("POST", "/admin/drain", body({"tenant_id": "acme", "timeout_ms": -(10**4_000)})),
    ("POST", "/admin/drain", body({"tenant_id": "acme", HUGE: 1})),
    ("POST", "/admin/drain", body({f"field-{i:05}": 1 for i in range(2_500)})),
    ("POST", "/admin/drain", b"[" + b"1," * 20_000 + b"1]"),
    ("POST", "/admin/drain", b"\xff" * 1_000),
    ("POST", "/admin/drain", HUGE.encode()),
    ("POST", "/admin/tenant/acme/drain", body({"timeout_ms": [HUGE]})),
    ("POST", "/admin/tenant/acme/drain", body({HUGE: HUGE[:1_000]})),
    ("POST", "/admin/reload", body({"hosted_tenants": HUGE})),
    ("POST", "/admin/reload", body({"hosted_tenants": [[HUGE[:1_000]]] * 50})),
    ("POST", "/admin/reload", body({"placement": HUGE})),
    ("POST", "/admin/reload", body({"hosted_tenants": [], HUGE: 1})),
    ("GET", "/admin/tenant/%20/status", None),
    ("POST", "/admin/drain", body({"tenant_id": HUGE})),
    ("POST", "/admin/reload", body({"hosted_tenants": ["ok", HUGE]})),
    ("POST", "/admin/reload", body({"placement": {HUGE: "shard-a"}})),
    ("POST", "/admin/reload", body({"placement": {"acme": HUGE}})),
    ("POST", "/admin/reload", body({"placement": {"acme": [HUGE[:1_000]] * 20}})),
    ("GET", "/admin/tenant/" + "x" * 10_000 + "/status", None),
    ("GET", "/admin/tenant/" + "%C3%A9" * 1_000 + "/ready", None),
    ("POST", "/admin/tenant/" + "%00" * 1_000 + "/drain", None),
]
"""Requests whose reason quotes each value the client sent in at most 64 characters (then
``…(N chars)``), in a reason of at most about 300 characters."""


@pytest.mark.trio
async def test_hostile_inputs_on_every_admin_route(backend: FakeBackend) -> None:
    async with running(make_server(backend)) as port:
        for method, path, sent in QUOTED:
            reason = assert_refused(await request(port, method, path, headers=AUTH, body=sent), 400)
            assert "x" * 65 not in reason, reason
            assert len(reason) <= 340, reason
            await assert_serving(port)
    assert backend.calls == []


AUTH_HEADERS = [
    b"Authorization: Bearer \xc3\xa9" + TOKEN.encode(),
    b"Authorization: \xff\xfe",
    b"Authorization: Bearer " + b"x" * 8_000,
    b"Authorization: Basic",
    b"Authorization: Bearer  ",
    b"Authorization:",
]


@pytest.mark.trio
@pytest.mark.parametrize("target", [b"/admin/tenants", b"/admin/tenant/acme/status"])
async def test_bad_authorization_bytes_are_401(backend: FakeBackend, target: bytes) -> None:
    async with running(make_server(backend)) as port:
        for line in AUTH_HEADERS:
            reply = await raw_request(port, head(b"GET", target, line))
            assert_refused(reply, 401, "AGGREGATE_ADMIN_TOKEN")
            assert "x" * 100 not in reply.body.decode()
        post = await raw_request(port, head(b"POST", b"/admin/drain", AUTH_HEADERS[0], body=b"{"))
        assert_refused(post, 401)
        await assert_serving(port)
    assert backend.calls == []


@pytest.mark.trio
async def test_non_ascii_header_values_are_accepted(backend: FakeBackend) -> None:
    sent = [BEARER, b"X-Correlation-Id: \xff\xfe", b"Traceparent: \xc3\xa9", b"X-Other: \x80"]
    async with running(make_server(backend)) as port:
        reply = await raw_request(port, head(b"GET", b"/admin/tenant/acme/status", *sent))
        assert reply.status == 200
        # Invalid context ids are replaced, never echoed.
        assert reply.headers["x-correlation-id"] != "\xff\xfe"
    assert backend.calls == [("tenant_status", "acme")]
