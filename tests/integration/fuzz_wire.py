"""Hypothesis strategies of the fuzz suite for what goes on the wire (raw HTTP/2): metadata
bytes, gRPC framing and headers, raw request bytes; and the shared-connection runner.

A bad call is never alone: ``on_shared_connection`` opens one HTTP/2 connection, starts ten
good calls and the bad one in the middle of them, all in flight at once, then checks the
bad call's answer against its case and that every good call was answered OK (one client's
bad header must not cut the calls of the others multiplexed with it).
"""

from __future__ import annotations

import string
import struct
import uuid
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
    grpc_frame,
    proto_field,
    request_headers,
    submit_body,
)
from tests.integration.fuzz_support import (
    BUSINESS,
    INVALID,
    TOO_BIG,
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


def _case(
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
        return _case(f"x-tenant-id of {kind} {value[:24]!r}", headers, body, INVALID | stream_error)
    if where == "context":
        name = draw(st.sampled_from(CONTEXT_HEADERS))
        headers = request_headers(authority, extra=[(name, value)])
        # Context ids that are invalid are replaced by generated ones (never refused).
        allowed = {"OK"} | INVALID | stream_error
        return _case(f"{name.decode()} of {kind} {value[:24]!r}", headers, body, frozenset(allowed))
    if where == "custom":
        headers = request_headers(authority, extra=[(b"x-fuzz-note", value)])
        return _case(
            f"x-fuzz-note of {kind}", headers, body, frozenset({"OK"} | INVALID | stream_error)
        )
    if where == "binary":
        junk = draw(st.one_of(NON_ASCII, st.sampled_from([b"!!!", b"a", b"====", b"YQ"])))
        headers = request_headers(authority, extra=[(b"x-fuzz-bin", junk)])
        return _case(
            f"x-fuzz-bin not base64 {junk[:24]!r}", headers, body, frozenset({"OK"} | INVALID)
        )
    if where == "name":
        name = draw(st.sampled_from([b"x-\xe9", b"\xff", b"x-caf\xc3\xa9", b"X-Upper", b"x y"]))
        headers = request_headers(authority, extra=[(name, b"v")])
        allowed = {"OK", PROTOCOL_ERROR} | INVALID
        return _case(f"header name {name!r}", headers, body, frozenset(allowed))
    if where == "path":
        cut = draw(st.integers(0, len(SUBMIT_PATH)))
        path = SUBMIT_PATH[:cut] + value + SUBMIT_PATH[cut:]
        headers = request_headers(authority, path=path)
        allowed = {"UNIMPLEMENTED", PROTOCOL_ERROR} | INVALID
        return _case(f":path with {kind} {path[-40:]!r}", headers, body, frozenset(allowed))
    if where == "authority":
        headers = request_headers(authority)
        headers[3] = (b":authority", value)
        return _case(
            f":authority of {kind}", headers, body, frozenset({"OK", PROTOCOL_ERROR} | INVALID)
        )
    headers = request_headers(authority, extra=[(b"grpc-timeout", b"5" + value)])
    return _case(
        f"grpc-timeout of {kind}",
        headers,
        body,
        MALFORMED | stream_error,
        internal_needs_reason=True,
    )


# --- gRPC framing ---------------------------------------------------------------------------


def frame_allowed(body: bytes) -> tuple[str, frozenset[str], bool]:
    """What a request body deserves as gRPC framing: (label, statuses, names_limit)."""
    if not body:
        return "no message", MALFORMED, False
    if len(body) < 5:
        return f"partial {len(body)}-byte prefix", MALFORMED, False
    flag, size, rest = body[0], struct.unpack(">I", body[1:5])[0], body[5:]
    if size >= HUGE_PREFIX:
        allowed = TOO_BIG if flag == 0 else TOO_BIG | MALFORMED | {"UNIMPLEMENTED"}
        return f"length prefix {size} (flag {flag})", allowed, True
    if flag == 1:
        return "compressed flag without grpc-encoding", MALFORMED | {"UNIMPLEMENTED"}, False
    if flag != 0:
        return f"flag byte {flag}", MALFORMED, False
    if size > len(rest):
        # Over 64 KiB the prefix may pass the server's message limit (a setting): then
        # refusing it from the prefix is right too.
        allowed = MALFORMED | (TOO_BIG if size > MAYBE_OVER_LIMIT else frozenset())
        return f"length prefix {size} > {len(rest)} bytes", allowed, False
    if size < len(rest):
        return f"{len(rest) - size} bytes after the message", MALFORMED | BUSINESS, False
    try:
        pb.SubmitCommandRequest.FromString(rest)
    except Exception:  # the message is not a SubmitCommandRequest
        return "undecodable message", INVALID, False
    return "decodable message", INVALID | TOO_BIG | BUSINESS, False


@st.composite
def framing_cases(draw: st.DrawFn) -> WireCase:
    """A good request's bytes, framed wrongly: flag bytes, compression without or with an
    encoding nobody supports, lying length prefixes (short, long, 4 GiB), partial
    prefixes, nothing at all, two messages."""
    message = open_account_request("frame").SerializeToString()
    authority = "127.0.0.1:1"
    kind = draw(
        st.sampled_from(
            [
                "flag",
                "compressed",
                "encoding",
                "longer",
                "huge",
                "shorter",
                "partial",
                "empty",
                "two messages",
            ]
        )
    )
    headers = request_headers(authority)
    if kind == "flag":
        flag = draw(st.sampled_from([7, 255]) | st.integers(2, 255))
        body = grpc_frame(message, flag=flag)
    elif kind == "compressed":
        body = grpc_frame(message, flag=1)
    elif kind == "encoding":
        encoding = draw(st.sampled_from([b"gzip", b"deflate", b"snappy", b"br", b"x-fuzz"]))
        flagged = draw(st.booleans())
        headers = request_headers(authority, extra=[(b"grpc-encoding", encoding)])
        body = grpc_frame(message, flag=int(flagged))
        label = f"grpc-encoding {encoding.decode()}, flag {int(flagged)}"
        if flagged:  # compressed with an encoding this server does not have
            return _case(label, headers, body, frozenset({"UNIMPLEMENTED"}), accept_encoding=True)
        return _case(label, headers, body, BUSINESS | {"UNIMPLEMENTED"}, accept_encoding=True)
    elif kind == "longer":
        body = grpc_frame(message, length=len(message) + draw(st.integers(1, 1 << 20)))
    elif kind == "huge":
        body = grpc_frame(message, length=draw(st.sampled_from([0xFFFFFFFF, HUGE_PREFIX])))
    elif kind == "shorter":
        body = grpc_frame(message, length=draw(st.integers(0, len(message) - 1)))
    elif kind == "partial":
        body = b"\x00" * draw(st.integers(1, 4))
    elif kind == "empty":
        body = b""
    else:
        body = grpc_frame(message) + grpc_frame(message)
        return _case(
            "two messages in a unary call",
            headers,
            body,
            MALFORMED | BUSINESS,
            internal_needs_reason=True,
        )
    label, allowed, names_limit = frame_allowed(body)
    return _case(label, headers, body, allowed, internal_needs_reason=True, names_limit=names_limit)


_TIMEOUT_UNITS = "HMSmun"


@st.composite
def header_cases(draw: st.DrawFn) -> WireCase:
    """gRPC request headers: grpc-timeout values (valid, zero, malformed: ``\\d`` matches
    Arabic-Indic digits, and at most 8 digits are allowed), content-type, te, :method."""
    authority = "127.0.0.1:1"
    body = good_body()
    kind = draw(
        st.sampled_from(
            ["timeout ok", "timeout zero", "timeout bad", "content-type", "te", "method"]
        )
    )
    if kind == "timeout ok":
        value = f"{draw(st.integers(1, 99_999_999))}{draw(st.sampled_from('HMS'))}".encode()
        headers = request_headers(authority, extra=[(b"grpc-timeout", value)])
        return _case(f"grpc-timeout {value!r}", headers, body, frozenset({"OK"}))
    if kind == "timeout zero":
        value = f"{'0' * draw(st.integers(1, 8))}{draw(st.sampled_from(_TIMEOUT_UNITS))}".encode()
        headers = request_headers(authority, extra=[(b"grpc-timeout", value)])
        return _case(
            f"grpc-timeout {value!r}", headers, body, frozenset({"DEADLINE_EXCEEDED"}) | INVALID
        )
    if kind == "timeout bad":
        value = draw(
            st.sampled_from(
                [
                    "abc",
                    "",
                    "1",
                    "S",
                    "-1S",
                    "1.5S",
                    "123456789S",
                    "1s",
                    " 1S",
                    "1S ",
                    "1 S",
                    "0x10S",
                    "\u0661S",  # Arabic-Indic 1: Python's \\d matches it
                    "\u0665m",
                    "\uff11S",  # fullwidth 1
                    "1S\n",
                    "+1S",
                ]
            )
            | st.text(string.ascii_letters + string.digits + " .-", max_size=12).filter(
                lambda t: (
                    not (
                        len(t) >= 2
                        and t[:-1].isascii()
                        and t[:-1].isdigit()
                        and len(t) <= 9
                        and t[-1] in _TIMEOUT_UNITS
                    )
                )
            )
        ).encode()
        headers = request_headers(authority, extra=[(b"grpc-timeout", value)])
        return _case(
            f"grpc-timeout {value!r}", headers, body, MALFORMED, internal_needs_reason=True
        )
    if kind == "content-type":
        content_type = draw(
            st.sampled_from(
                [
                    None,
                    b"text/plain",
                    b"application/grpcx",
                    b"application/json",
                    b"application/grpc+json",
                    b"",
                ]
            )
        )
        headers = request_headers(authority, content_type=content_type)
        # The spec says 415 (so HTTP clients do not take the answer for a success); a
        # lenient server may serve the call (the body is a good message): never UNKNOWN.
        allowed = {"HTTP 415", "UNIMPLEMENTED", "OK"} | MALFORMED
        return _case(
            f"content-type {content_type!r}",
            headers,
            body,
            frozenset(allowed),
            internal_needs_reason=True,
        )
    if kind == "te":
        te = draw(st.sampled_from([None, b"gzip", b""]))
        headers = request_headers(authority, te=te)
        allowed = {"OK", "HTTP 400"} | MALFORMED
        return _case(f"te {te!r}", headers, body, frozenset(allowed), internal_needs_reason=True)
    method = draw(st.sampled_from([b"GET", b"PUT", b"DELETE", b"post"]))
    headers = request_headers(authority)
    headers[0] = (b":method", method)
    allowed = {"HTTP 405", "UNIMPLEMENTED", PROTOCOL_ERROR} | MALFORMED
    return _case(
        f":method {method!r}", headers, body, frozenset(allowed), internal_needs_reason=True
    )


# --- raw request bytes ----------------------------------------------------------------------

_STRING_FIELDS = {1: "command_id", 2: "aggregate_type", 3: "aggregate_id", 4: "payload_json"}


@st.composite
def raw_body_cases(draw: st.DrawFn) -> WireCase:
    """Request bodies of raw bytes: unframed, framed random bytes, or a hand-encoded
    request whose string field holds invalid UTF-8 (protobuf refuses it: INVALID)."""
    headers = request_headers("127.0.0.1:1")
    kind = draw(st.sampled_from(["unframed", "framed", "bad utf-8"]))
    if kind == "unframed":
        body = draw(st.binary(max_size=600))
    elif kind == "framed":
        body = grpc_frame(draw(st.binary(max_size=600)))
    else:
        number = draw(st.sampled_from(sorted(_STRING_FIELDS)))
        junk = draw(NON_ASCII.filter(_not_utf8))
        fields = {
            1: str(uuid.uuid4()).encode(),
            2: b"bank-account",
            4: b'{"type": "OpenAccount", "owner": "u"}',
        }
        fields[number] = fields.get(number, b"")[:4] + junk
        message = b"".join(proto_field(n, v) for n, v in sorted(fields.items()))
        return _case(
            f"{_STRING_FIELDS[number]} with invalid UTF-8 {junk[:16]!r}",
            headers,
            grpc_frame(message),
            INVALID,
        )
    label, allowed, names_limit = frame_allowed(body)
    return _case(
        f"{kind}: {label}",
        headers,
        body,
        allowed,
        internal_needs_reason=True,
        names_limit=names_limit,
    )


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


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
        _case("x-tenant-id é (latin-1)", request_headers(authority, tenant=b"\xe9"), body, INVALID),
        _case(
            "x-tenant-id é (UTF-8)", request_headers(authority, tenant="é".encode()), body, INVALID
        ),
        _case(
            "x-correlation-id \\xff",
            request_headers(authority, extra=[(b"x-correlation-id", b"\xff")]),
            body,
            context_ok,
        ),
        _case(
            "UTF-8 traceparent",
            request_headers(authority, extra=[(b"traceparent", traceparent)]),
            body,
            context_ok,
        ),
        _case(
            ":path with \\xff",
            request_headers(authority, path=SUBMIT_PATH + b"\xff"),
            body,
            frozenset({"UNIMPLEMENTED", PROTOCOL_ERROR}) | INVALID,
        ),
    ]


def _framed(headers: Headers, body: bytes, label: str = "") -> WireCase:
    what, allowed, names_limit = frame_allowed(body)
    return _case(
        label or what, headers, body, allowed, internal_needs_reason=True, names_limit=names_limit
    )


def issue_framing_cases() -> list[WireCase]:
    """The compressed flag (no encoding, gzip, an unknown one), flag bytes 7 and 255, a
    length prefix larger than the data and of 4 GiB, a partial prefix."""
    authority = "127.0.0.1:1"
    message = open_account_request("issue").SerializeToString()
    plain = request_headers(authority)
    cases = [
        _framed(plain, grpc_frame(message, flag=1)),
        _framed(plain, grpc_frame(message, flag=7)),
        _framed(plain, grpc_frame(message, flag=255)),
        _framed(plain, grpc_frame(message, length=len(message) + 10)),
        _framed(plain, grpc_frame(message, length=0xFFFFFFFF)),
        _framed(plain, b"\x00\x00\x00"),
    ]
    for encoding in (b"gzip", b"x-unknown"):
        headers = request_headers(authority, extra=[(b"grpc-encoding", encoding)])
        cases.append(
            _case(
                f"grpc-encoding {encoding.decode()}, flag 1",
                headers,
                grpc_frame(message, flag=1),
                frozenset({"UNIMPLEMENTED"}),
                accept_encoding=True,
            )
        )
    return cases


def issue_header_cases() -> list[WireCase]:
    """``grpc-timeout: 0n`` (the deadline has passed) and ``abc`` (malformed)."""
    authority, body = "127.0.0.1:1", good_body()
    zero = request_headers(authority, extra=[(b"grpc-timeout", b"0n")])
    bad = request_headers(authority, extra=[(b"grpc-timeout", b"abc")])
    return [
        _case("grpc-timeout b'0n'", zero, body, frozenset({"DEADLINE_EXCEEDED"}) | INVALID),
        _case("grpc-timeout b'abc'", bad, body, MALFORMED, internal_needs_reason=True),
    ]
