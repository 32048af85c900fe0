"""Hypothesis strategies of the fuzz suite for gRPC framing and request headers over raw
HTTP/2: flag bytes, compression, lying and partial length prefixes, raw request bytes,
``grpc-timeout``, ``content-type``, ``te`` and ``:method``; each case with what it deserves
(``frame_allowed`` judges any body as gRPC framing).
"""

from __future__ import annotations

import string
import struct
import uuid

from hypothesis import strategies as st

from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.fuzz_h2 import Headers, grpc_frame, proto_field, request_headers
from tests.integration.fuzz_support import BUSINESS, INVALID, TOO_BIG, open_account_request
from tests.integration.fuzz_wire import (
    HUGE_PREFIX,
    MALFORMED,
    MAYBE_OVER_LIMIT,
    NON_ASCII,
    PROTOCOL_ERROR,
    WireCase,
    good_body,
    wire_case,
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
            return wire_case(
                label, headers, body, frozenset({"UNIMPLEMENTED"}), accept_encoding=True
            )
        return wire_case(label, headers, body, BUSINESS | {"UNIMPLEMENTED"}, accept_encoding=True)
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
        return wire_case(
            "two messages in a unary call",
            headers,
            body,
            MALFORMED | BUSINESS,
            internal_needs_reason=True,
        )
    label, allowed, names_limit = frame_allowed(body)
    return wire_case(
        label, headers, body, allowed, internal_needs_reason=True, names_limit=names_limit
    )


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
        return wire_case(f"grpc-timeout {value!r}", headers, body, frozenset({"OK"}))
    if kind == "timeout zero":
        value = f"{'0' * draw(st.integers(1, 8))}{draw(st.sampled_from(_TIMEOUT_UNITS))}".encode()
        headers = request_headers(authority, extra=[(b"grpc-timeout", value)])
        return wire_case(
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
        return wire_case(
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
        return wire_case(
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
        return wire_case(
            f"te {te!r}", headers, body, frozenset(allowed), internal_needs_reason=True
        )
    method = draw(st.sampled_from([b"GET", b"PUT", b"DELETE", b"post"]))
    headers = request_headers(authority)
    headers[0] = (b":method", method)
    allowed = {"HTTP 405", "UNIMPLEMENTED", PROTOCOL_ERROR} | MALFORMED
    return wire_case(
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
        return wire_case(
            f"{_STRING_FIELDS[number]} with invalid UTF-8 {junk[:16]!r}",
            headers,
            grpc_frame(message),
            INVALID,
        )
    label, allowed, names_limit = frame_allowed(body)
    return wire_case(
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


# --- the triggers the issue reports, always run (explicit examples) --------------------------


def _framed(headers: Headers, body: bytes, label: str = "") -> WireCase:
    what, allowed, names_limit = frame_allowed(body)
    return wire_case(
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
            wire_case(
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
        wire_case("grpc-timeout b'0n'", zero, body, frozenset({"DEADLINE_EXCEEDED"}) | INVALID),
        wire_case("grpc-timeout b'abc'", bad, body, MALFORMED, internal_needs_reason=True),
    ]
