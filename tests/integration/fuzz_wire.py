"""The fuzz suite's raw HTTP/2 cases (``WireCase``) and their runner, with the strategies for
metadata bytes and junk connections (gRPC framing and headers: ``fuzz_framing``).

A bad call is never alone: ``on_shared_connection`` opens one HTTP/2 connection, starts ten
good calls and the bad one in the middle of them, all in flight at once, then checks the
bad call's answer against its case and that every good call was answered OK (one client's
bad header must not cut the calls of the others multiplexed with it).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.fuzz_h2 import (
    COLLECT_TIMEOUT,
    SUBMIT_PATH,
    Call,
    Headers,
    Outcome,
    RawH2Connection,
    request_headers,
    submit_body,
)
from tests.integration.fuzz_support import (
    INVALID,
    FuzzNode,
    check_status,
    open_account_request,
)

PROTOCOL_ERROR = "RST_STREAM(1)"
"""A stream error PROTOCOL_ERROR: what RFC 9113 prescribes for a malformed request."""
MALFORMED = INVALID | {"INTERNAL"}
"""Malformed gRPC framing: INTERNAL with a reason (the gRPC spec) or INVALID_ARGUMENT."""
HUGE_PREFIX = 64 * 1024 * 1024
"""A length prefix at least this large is over any sane message limit."""
MAYBE_OVER_LIMIT = 64 * 1024
"""A length prefix above this may be over the server's message limit."""


def outcome_status(outcome: Outcome) -> str:
    """One word for what a stream got: its gRPC status name, else how it ended."""
    if outcome.grpc_status is not None:
        return outcome.grpc_status
    if outcome.reset is not None:
        return f"RST_STREAM({outcome.reset})"
    if outcome.http_status is not None:
        return f"HTTP {outcome.http_status}"
    return "NO ANSWER"


@dataclass(frozen=True)
class WireCase:
    """A bad call: what it is, what it sends, what it deserves."""

    label: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    allowed: frozenset[str]
    internal_needs_reason: bool = False
    names_limit: bool = False
    accept_encoding: bool = False  # an UNIMPLEMENTED answer must say which encodings work
    open_stream: bool = False  # the client never ends its side

    def call(self) -> Call:
        return Call(list(self.headers), self.body, end_stream=not self.open_stream)


def good_body() -> bytes:
    return submit_body(open_account_request("wire"))


def wire_case(
    label: str, headers: Headers, body: bytes, allowed: frozenset[str], **kw: bool
) -> WireCase:
    return WireCase(label, tuple(headers), body, frozenset(allowed), **kw)


def on_shared_connection(
    node: FuzzNode, input_class: str, case: WireCase, timeout: float = COLLECT_TIMEOUT
) -> Outcome:
    """The bad call amid ten good ones on one connection; checks all eleven answers."""
    with RawH2Connection(node.grpc) as conn:
        goods = [Call(request_headers(conn.authority), good_body()) for _ in range(10)]
        exchange = conn.exchange([*goods[:5], case.call(), *goods[5:]], timeout)
    outcomes = exchange.outcomes
    for outcome in outcomes:
        if outcome.grpc_status == "OK":
            for message in outcome.messages():
                node.remember(pb.SubmitCommandResponse.FromString(message).aggregate_id)
    bad, goods_ok = (
        outcomes[5],
        sum(o.grpc_status == "OK" for o in outcomes) - (outcomes[5].grpc_status == "OK"),
    )
    status = outcome_status(bad)
    label = (
        f"{case.label} (connection: {exchange.connection_end or 'open'}; "
        f"{goods_ok} of 10 good calls beside answered OK)"
    )
    check_status(
        input_class,
        label,
        status,
        bad.grpc_message,
        case.allowed,
        internal_needs_reason=case.internal_needs_reason,
        names_limit=case.names_limit,
    )
    if status == "UNIMPLEMENTED" and case.accept_encoding:
        assert bad.header(b"grpc-accept-encoding"), f"{label}: no grpc-accept-encoding"
    for index, outcome in enumerate([*outcomes[:5], *outcomes[6:]]):
        check_status(
            f"{input_class}: 10 good calls beside",
            f"good call {index} beside {label}",
            outcome_status(outcome),
            outcome.grpc_message,
            {"OK"},
        )
    return bad


# --- metadata over raw HTTP/2 ---------------------------------------------------------------

_HIGH_BYTES = st.binary(min_size=1, max_size=40).filter(lambda b: any(x >= 0x80 for x in b))
_UTF8_TEXT = st.text(min_size=1, max_size=20).filter(lambda t: not t.isascii()).map(str.encode)
_SAMPLES = st.sampled_from(
    [b"\xe9", b"\xff", b"caf\xe9", b"\xc3\xa9", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80" * 64]
)
NON_ASCII = st.one_of(_HIGH_BYTES, _UTF8_TEXT, _SAMPLES)
CONTROL = st.binary(min_size=1, max_size=16).filter(lambda b: any(x < 0x20 or x == 0x7F for x in b))
CONTEXT_HEADERS = [b"x-correlation-id", b"correlation-id", b"traceparent", b"x-request-id"]


@st.composite
def metadata_cases(draw: st.DrawFn) -> WireCase:
    """A good OpenAccount call with one header made of bytes gRPC metadata may not hold:
    non-ASCII (the case that killed whole connections) or control characters."""
    authority = "127.0.0.1:1"  # a placeholder: the server does not route on it
    where = draw(
        st.sampled_from(
            ["tenant", "context", "custom", "binary", "name", "path", "authority", "timeout"]
        )
    )
    control = draw(st.booleans()) and where not in ("name", "binary")
    value = draw(CONTROL if control else NON_ASCII)
    stream_error = {PROTOCOL_ERROR} if control else set()
    kind = "control bytes" if control else "non-ASCII bytes"
    body = good_body()
    if where == "tenant":
        headers = request_headers(authority, tenant=value)
        return wire_case(
            f"x-tenant-id of {kind} {value[:24]!r}", headers, body, INVALID | stream_error
        )
    if where == "context":
        name = draw(st.sampled_from(CONTEXT_HEADERS))
        headers = request_headers(authority, extra=[(name, value)])
        # Context ids that are invalid are replaced by generated ones (never refused).
        allowed = {"OK"} | INVALID | stream_error
        return wire_case(
            f"{name.decode()} of {kind} {value[:24]!r}", headers, body, frozenset(allowed)
        )
    if where == "custom":
        headers = request_headers(authority, extra=[(b"x-fuzz-note", value)])
        return wire_case(
            f"x-fuzz-note of {kind}", headers, body, frozenset({"OK"} | INVALID | stream_error)
        )
    if where == "binary":
        junk = draw(st.one_of(NON_ASCII, st.sampled_from([b"!!!", b"a", b"====", b"YQ"])))
        headers = request_headers(authority, extra=[(b"x-fuzz-bin", junk)])
        return wire_case(
            f"x-fuzz-bin not base64 {junk[:24]!r}", headers, body, frozenset({"OK"} | INVALID)
        )
    if where == "name":
        name = draw(st.sampled_from([b"x-\xe9", b"\xff", b"x-caf\xc3\xa9", b"X-Upper", b"x y"]))
        headers = request_headers(authority, extra=[(name, b"v")])
        allowed = {"OK", PROTOCOL_ERROR} | INVALID
        return wire_case(f"header name {name!r}", headers, body, frozenset(allowed))
    if where == "path":
        cut = draw(st.integers(0, len(SUBMIT_PATH)))
        path = SUBMIT_PATH[:cut] + value + SUBMIT_PATH[cut:]
        headers = request_headers(authority, path=path)
        allowed = {"UNIMPLEMENTED", PROTOCOL_ERROR} | INVALID
        return wire_case(f":path with {kind} {path[-40:]!r}", headers, body, frozenset(allowed))
    if where == "authority":
        headers = request_headers(authority)
        headers[3] = (b":authority", value)
        return wire_case(
            f":authority of {kind}", headers, body, frozenset({"OK", PROTOCOL_ERROR} | INVALID)
        )
    headers = request_headers(authority, extra=[(b"grpc-timeout", b"5" + value)])
    return wire_case(
        f"grpc-timeout of {kind}",
        headers,
        body,
        MALFORMED | stream_error,
        internal_needs_reason=True,
    )


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def junk_connection_bytes() -> st.SearchStrategy[tuple[str, bytes]]:
    """What a broken or hostile peer writes on a fresh connection: random bytes, a wrong
    preface, or random frames after a correct preface and SETTINGS."""
    return st.one_of(
        st.binary(min_size=1, max_size=300).map(lambda b: ("random bytes", b)),
        st.binary(max_size=40).map(lambda b: ("truncated preface", PREFACE[: len(b) % 24] + b)),
        st.binary(min_size=1, max_size=300).map(
            lambda b: ("random frames after the preface", PREFACE + EMPTY_SETTINGS + b)
        ),
        st.builds(
            lambda kind, flags, stream, payload: (
                f"frame type {kind} on stream {stream}",
                PREFACE
                + EMPTY_SETTINGS
                + len(payload).to_bytes(3, "big")
                + bytes([kind, flags])
                + stream.to_bytes(4, "big")
                + payload,
            ),
            st.integers(0, 255),
            st.integers(0, 255),
            st.sampled_from([0, 1, 2, 3, 0x7FFFFFFF]),
            st.binary(max_size=64),
        ),
    )


# --- the triggers the issue reports, always run (explicit examples) --------------------------


def issue_metadata_cases() -> list[WireCase]:
    """``x-tenant-id: é``, a ``\\xff`` correlation id, a UTF-8 traceparent, a ``:path`` with
    a byte above 0x7F: each once killed every call on its connection."""
    authority, body = "127.0.0.1:1", good_body()
    context_ok = frozenset({"OK"}) | INVALID
    traceparent = "00-é0000000000000000000000000001-0000000000000001-01".encode()
    return [
        wire_case(
            "x-tenant-id é (latin-1)", request_headers(authority, tenant=b"\xe9"), body, INVALID
        ),
        wire_case(
            "x-tenant-id é (UTF-8)", request_headers(authority, tenant="é".encode()), body, INVALID
        ),
        wire_case(
            "x-correlation-id \\xff",
            request_headers(authority, extra=[(b"x-correlation-id", b"\xff")]),
            body,
            context_ok,
        ),
        wire_case(
            "UTF-8 traceparent",
            request_headers(authority, extra=[(b"traceparent", traceparent)]),
            body,
            context_ok,
        ),
        wire_case(
            ":path with \\xff",
            request_headers(authority, path=SUBMIT_PATH + b"\xff"),
            body,
            frozenset({"UNIMPLEMENTED", PROTOCOL_ERROR}) | INVALID,
        ),
    ]
