"""The header parser put on NATS clients returns what nats-py's own parser returns."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from nats.aio.client import Client

from aggregate.adapters.jetstream import headers

STORED = (
    b"tenant-id: acme\r\n"
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"Nats-Msg-Id: tenant.acme.aggregate.account.0190f3c2-7a4b-7c3d-8e5f-1a2b3c4d5e6f.x\r\n"
    b"Nats-Expected-Last-Subject-Sequence: 0\r\n"
    b"version: 4\r\n"
    b"Nats-Stream: AGGREGATE_EVENTS\r\n"
    b"Nats-Sequence: 17\r\n"
    b"Nats-Time-Stamp: 2026-12-02T01:51:46.805348817Z\r\n"
    b"Nats-Num-Pending: 1999\r\n"
    b"\r\n"
)

ODD_BUT_VALID = [
    b"A:b\r\n\r\n",  # no space after the colon
    b"A:\tb\t\r\n\r\n",  # tabs around the value
    b"A:   b  \r\n\r\n",  # spaces around the value
    b"A: b\r\nA: c\r\n\r\n",  # repeated name: the last value
    b"A:\r\n\r\n",  # empty value
    b"A: b:c: d\r\n\r\n",  # colons in the value
    b" A : b\r\n\r\n",  # spaces around the name
    "A: gr\u00fc\u00df \u2603\r\n\r\n".encode(),  # UTF-8 value
    b"A: \xff\xfe\r\n\r\n",  # invalid UTF-8: replacement characters
    b"A B: c\r\nD: e\r\n\r\n",  # a space inside a name: that line is dropped
    b"A\x1cB: c\r\n\r\n",  # a separator control inside a name: dropped
    b"\x1cA: c\r\n\r\n",  # ... also at its edge, where bytes.strip keeps it
    b"\xc3\xa4: c\r\nD: e\r\n\r\n",  # a non-ASCII name: dropped
    b"\x1cA: c\r\n B\x1f : d\r\nE: \xff\r\n\r\n",  # odd names in a non-ASCII block
    b"no colon here\r\nD: e\r\n\r\n",  # a line without a colon: skipped
    b": nameless\r\n\r\n",  # an empty name
    b"A: b\nC: d\r\n\r\n",  # a bare LF inside a line
    b"A: b",  # no final CRLF
    b"",
    b"\r\n\r\n\r\n",
]


def test_stored_message_headers_parse_as_nats_py_parses_them() -> None:
    parsed = headers.parse_header_lines(STORED)
    assert parsed == Client._parse_header_lines(STORED)
    assert parsed["Nats-Sequence"] == "17"
    assert parsed["tenant-id"] == "acme"
    assert len(parsed) == 9


def test_odd_but_valid_headers_parse_as_nats_py_parses_them() -> None:
    for raw in ODD_BUT_VALID:
        assert headers.parse_header_lines(raw) == Client._parse_header_lines(raw), raw
    assert headers.parse_header_lines(b"A:\tb\t\r\n\r\n") == {"A": "b"}
    assert headers.parse_header_lines(b"A B: c\r\nD: e\r\n\r\n") == {"D": "e"}


_PIECES = st.sampled_from(
    [
        *(b"\r\n", b":", b": ", b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x1c", b"\x1f", b"\x00"),
        *(b"Nats-Sequence", b"a", b"Z9", b"-", b"\xc3\xa4", b"\xff", b"\xe2\x98"),
    ]
)


@given(st.lists(_PIECES, max_size=40).map(b"".join))
@example(STORED)
def test_any_block_of_header_pieces_parses_as_nats_py_parses_it(raw: bytes) -> None:
    assert headers.parse_header_lines(raw) == Client._parse_header_lines(raw)


@given(st.binary(max_size=200))
def test_any_bytes_parse_as_nats_py_parses_them(raw: bytes) -> None:
    assert headers.parse_header_lines(raw) == Client._parse_header_lines(raw)


def test_install_puts_the_parser_on_one_client_only() -> None:
    fast, plain = Client(), Client()
    assert headers.install(fast)
    assert headers.install(fast)  # idempotent
    assert fast._parse_header_lines is headers.parse_header_lines
    assert plain._parse_header_lines is Client._parse_header_lines
