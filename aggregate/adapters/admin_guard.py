"""What the admin HTTP server refuses before routing, and how it refuses it.

Two layers, both answering ``{"error": "<reason>"}`` with a 4xx/5xx code (``clip_reason``
bounds every reason the admin server sends):

- ``RequestGuard``, an ASGI middleware, checks every request hypercorn hands over: HTTP/1.x
  only (505 otherwise) and no WebSocket handshakes (400); the request target is a path
  whose raw bytes decode one segment at a time: hypercorn percent-decodes the whole path
  before routing, so ``%2F`` would become a ``/`` that routes elsewhere (it is refused), and
  a bad percent-escape or a non-UTF-8 path would be passed on half-decoded (both are 400);
  the head (target and headers) is within ``max_header_bytes`` (414 or 431) and has at most
  ``max_headers`` fields (431). What passes decodes the same both ways.
- ``AdminH11Protocol`` replaces hypercorn's HTTP/1.1 protocol: it never switches to HTTP/2
  (no ``Upgrade: h2c``, no prior-knowledge preface: hypercorn's HTTP/2 code lets one
  malformed stream take the whole server down), and the answers hypercorn gives itself
  to what h11 cannot parse (bad Content-Length, malformed header lines, a head past
  ``h11_max_incomplete_size``) carry a JSON reason instead of an empty body.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h11
import hypercorn.protocol
from hypercorn.protocol.h11 import H11Protocol

if TYPE_CHECKING:
    from hypercorn.typing import (
        ASGIFramework,
        ASGIReceiveCallable,
        ASGISendCallable,
        HTTPScope,
        Scope,
    )

MAX_REASON_CHARS = 300
"""Longest error reason the admin server sends; a longer one (a message that quotes too much
of what the client sent) keeps its start and its end, where the advice is."""

_HTTP1_VERSIONS = frozenset({"1.0", "1.1"})
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})?")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds of one admin request (settings ``http_max_*``, ``http_body_timeout_ms``)."""

    max_body_bytes: int = 64 * 1024
    """Largest request body; larger: 413."""
    max_header_bytes: int = 16 * 1024
    """Largest request head: the target plus every header name and value; larger: 431
    (414 when the target alone is larger)."""
    max_headers: int = 100
    """Most header fields in one request; more: 431."""
    body_timeout_s: float = 10.0
    """How long a request body may take to arrive; slower: 408."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused before routing: HTTP status and a reason a person can act on."""

    status: int
    reason: str


_NO_WEBSOCKETS = Refusal(400, "this server has no WebSocket endpoints; send plain HTTP requests")


def clip_reason(reason: str) -> str:
    """``reason`` cut in the middle to at most ``MAX_REASON_CHARS`` characters."""
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    tail = MAX_REASON_CHARS // 3
    cut = len(reason) - (MAX_REASON_CHARS - tail)
    return f"{reason[: MAX_REASON_CHARS - 2 * tail]} ...({cut} characters cut)... {reason[-tail:]}"


def shorten(text: str, limit: int = 40) -> str:
    """``text``, or its first ``limit`` characters and its length when it is longer."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def decode_path(raw: bytes) -> str | Refusal:
    """The request path, decoded from the bytes the client sent.

    Each ``/``-separated segment is percent-decoded on its own, strictly: an escape that is
    not ``%`` and two hex digits, a decoded segment that is not UTF-8, or one that holds a
    ``/`` (``%2F``: a path parameter is one segment, never two) is a ``Refusal``.
    """
    if not raw.startswith(b"/"):
        return Refusal(400, "the request target must be a path starting with '/'")
    segments = []
    for segment in raw.split(b"/"):
        escapes = _ESCAPE.findall(segment)
        quoted = repr(shorten(segment.decode("latin-1")))
        if b"" in escapes:
            return Refusal(
                400,
                f"path segment {quoted} has a malformed percent-escape: "
                "'%' must be followed by two hex digits",
            )
        try:
            decoded = _ESCAPE.sub(lambda m: bytes.fromhex(m[1].decode()), segment).decode()
        except UnicodeDecodeError:
            return Refusal(400, f"path segment {quoted} is not UTF-8 once percent-decoded")
        if "/" in decoded:
            return Refusal(
                400,
                f"path segment {quoted} holds an encoded '/' (%2F); a path parameter is one "
                "segment: send ids without '/'",
            )
        segments.append(decoded)
    return "/".join(segments)


def check_request(scope: HTTPScope, limits: HttpLimits) -> Refusal | None:
    """Why an ASGI ``http`` request is refused, or None when it may be routed."""
    if scope["http_version"] not in _HTTP1_VERSIONS:
        return Refusal(505, "this server speaks HTTP/1.1 only; send the request over HTTP/1.1")
    headers = list(scope["headers"])
    if len(headers) > limits.max_headers:
        return Refusal(
            431, f"the request has {len(headers)} header fields; the limit is {limits.max_headers}"
        )
    raw = scope.get("raw_path") or scope["path"].encode()
    target_bytes = len(raw) + len(scope["query_string"])
    if target_bytes > limits.max_header_bytes:
        return Refusal(
            414,
            f"the request target is {target_bytes} bytes; the limit is {limits.max_header_bytes}",
        )
    head_bytes = target_bytes + sum(len(name) + len(value) for name, value in headers)
    if head_bytes > limits.max_header_bytes:
        return Refusal(
            431,
            f"the request target and headers are {head_bytes} bytes; "
            f"the limit is {limits.max_header_bytes}",
        )
    decoded = decode_path(raw)
    return decoded if isinstance(decoded, Refusal) else None


async def send_json_error(
    send: ASGISendCallable, refusal: Refusal, *, websocket: bool = False
) -> None:
    """Answer an ASGI request with ``refusal`` (``websocket``: refuse a WebSocket handshake
    the same way, through the ``websocket.http.response`` extension).

    The connection stays open: with ``Connection: close``, bytes the client had already sent
    after the request (an HTTP/2 preface's frames) make h11 fail while the answer is being
    written, and hypercorn then closes the socket under it.
    """
    body = json.dumps({"error": refusal.reason}, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if websocket:
        await send(
            {
                "type": "websocket.http.response.start",
                "status": refusal.status,
                "headers": headers,
            }
        )
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
        return
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": headers,
            "trailers": False,
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class RequestGuard:
    """ASGI middleware: answers what ``check_request`` refuses, passes the rest on, and
    refuses WebSocket handshakes (the admin API has none)."""

    def __init__(self, app: ASGIFramework, limits: HttpLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "websocket":
            await send_json_error(send, _NO_WEBSOCKETS, websocket=True)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = check_request(scope, self.limits)
        if refusal is not None:
            await send_json_error(send, refusal)
            return
        await self.app(scope, receive, send)


class AdminH11Protocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol without the switch to HTTP/2, with JSON refusals."""

    async def _check_protocol(self, event: h11.Request) -> None:
        # hypercorn switches to HTTP/2 here (h2c upgrade, prior-knowledge preface). Not
        # switching serves an upgrade request over HTTP/1.1 and hands a preface to the
        # app as a "PRI * HTTP/2.0" request, which ``RequestGuard`` answers with 505.
        return

    async def _send_error_response(self, status_code: int) -> None:
        if status_code == 431:
            reason = (
                "the request line and headers are larger than "
                f"{self.config.h11_max_incomplete_size} bytes, the limit"
            )
        elif status_code == 501:
            reason = "only 'Transfer-Encoding: chunked' is supported"
        else:
            reason = (
                "malformed HTTP/1.1 request: check the request line, the header lines and "
                "Content-Length"
            )
        body = json.dumps({"error": reason}, separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        headers.extend(self.config.response_headers("h11"))
        await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())


def install_admin_protocol() -> None:
    """Make hypercorn serve HTTP/1.1 connections with ``AdminH11Protocol``.

    hypercorn takes no protocol class as an option: its connection wrapper looks the class
    up in ``hypercorn.protocol`` for each new connection, so this replaces it there, for
    every hypercorn server of the process (the admin server is the only one).
    """
    hypercorn.protocol.H11Protocol = AdminH11Protocol  # type: ignore[attr-defined]
