"""The gRPC server's header blocks: the HPACK encoder of its responses (no dynamic table, no
Huffman) and the transport's accounting of a request's header list."""

from __future__ import annotations

import hpack
import pytest
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple
from hpack.table import HeaderTable
from hypothesis import given
from hypothesis import strategies as st

from aggregate.adapters.grpc.headers import KEPT_LIMIT, ResponseHeaderEncoder
from aggregate.adapters.grpc.transport import check_request


def test_blocks_announce_an_empty_table_and_carry_values_verbatim() -> None:
    encoder = ResponseHeaderEncoder()
    decoder = hpack.Decoder()
    first = encoder.encode([(":status", "200"), ("x-correlation-id", "corr-0123456789")])
    assert first[0] == 0x20  # dynamic table size update to 0 (RFC 7541 §6.3)
    assert b"corr-0123456789" in first  # a literal, not Huffman-coded
    assert decoder.decode(first) == [(":status", "200"), ("x-correlation-id", "corr-0123456789")]
    encoder.header_table_size = 4096  # the client's SETTINGS_HEADER_TABLE_SIZE
    for n in range(50):
        headers = [(":status", "200"), ("traceparent", f"00-{n:032x}-{n:016x}-01")]
        block = encoder.encode(headers)
        assert block[0] != 0x20  # no further size update
        assert decoder.decode(block) == headers
    assert encoder.header_table_size == 0
    assert len(encoder.header_table.dynamic_entries) == 0
    assert decoder.header_table_size == 0


_STATIC = list(HeaderTable.STATIC_TABLE)
_OURS = [b"x-correlation-id", b"traceparent", b"grpc-status"]
_NAMES = st.sampled_from([*sorted({name for name, _ in _STATIC}), *_OURS]) | st.binary(
    min_size=1, max_size=300
)
_HEADER = st.one_of(
    st.sampled_from(_STATIC),  # an entry of the static table: indexed
    st.tuples(_NAMES, st.binary(max_size=300)),  # lengths past the 7-bit prefix too
)


@given(
    st.lists(st.tuples(_HEADER, st.booleans(), st.sampled_from(["tuple", "header", "str"]))),
    st.integers(min_value=1, max_value=3),
)
def test_every_header_list_decodes_to_itself_with_hpack(
    spec: list[tuple[tuple[bytes, bytes], bool, str]], blocks: int
) -> None:
    """Whatever the headers (static entries, static names, other names, long values,
    sensitive ones, as h2's tuples or plain ones), hpack's decoder reads back the same list,
    sensitive headers as never indexed, and never adds to its table."""
    encoder = ResponseHeaderEncoder()
    decoder = hpack.Decoder()
    decoder.max_header_list_size = 2**31
    assert decoder.decode(encoder.encode([(b":status", b"200")])) == [(":status", "200")]
    headers: list[object] = []
    for (name, value), sensitive, form in spec:
        if form == "header":
            kind = NeverIndexedHeaderTuple if sensitive else HeaderTuple
            headers.append(kind(name, value))
        elif form == "str":
            headers.append((name.decode("latin-1"), value.decode("latin-1"), sensitive))
        else:
            headers.append((name, value, sensitive))
    for _ in range(blocks):  # the kept encodings give the same blocks again
        decoded = decoder.decode(encoder.encode(headers), raw=True)
        assert len(decoded) == len(spec)
        for got, ((name, value), sensitive, form) in zip(decoded, spec, strict=True):
            if form == "str":  # str headers go out as UTF-8, as hpack's encoder sends them
                name = name.decode("latin-1").encode("utf-8")
                value = value.decode("latin-1").encode("utf-8")
            assert (got[0], got[1]) == (name, value)
            assert isinstance(got, NeverIndexedHeaderTuple) == sensitive
    assert len(decoder.header_table.dynamic_entries) == 0


def test_kept_encodings_are_bounded() -> None:
    encoder = ResponseHeaderEncoder()
    decoder = hpack.Decoder()
    encoder.encode([(":status", "200")])
    for n in range(KEPT_LIMIT + 50):
        headers = [("grpc-status", "8"), ("grpc-message", f"tenant t{n} is over its quota")]
        assert decoder.decode(encoder.encode(headers)) == headers
    assert len(encoder._kept) == KEPT_LIMIT


GRPC_CALL = [
    (":method", "POST"),
    (":path", "/aggregate.gateway.v1.CommandService/SubmitCommand"),
    ("te", "trailers"),
    ("content-type", "application/grpc"),
]


@pytest.mark.parametrize(
    "extra",
    [
        [("x-one", "a" * 300)],
        [("x-same", "b" * 100)] * 40,  # repeated names: the dict of fields holds one
        [("x-same", "c" * 10), ("x-other", ""), ("x-same", "d" * 500)],
    ],
    ids=["distinct", "repeated", "mixed"],
)
def test_header_list_size_is_http2_accounting(extra: list[tuple[str, str]]) -> None:
    headers = GRPC_CALL + extra
    size = sum(len(name) + len(value) + 32 for name, value in headers)
    assert check_request(headers, dict(headers), size) is None
    refusal = check_request(headers, dict(headers), size - 1)
    assert refusal is not None
    assert refusal.status.name == "RESOURCE_EXHAUSTED"
    assert f"are {size} bytes" in refusal.message


def test_every_grpc_timeout_value_is_checked() -> None:
    headers = [*GRPC_CALL, ("grpc-timeout", "abc"), ("grpc-timeout", "5S")]
    refusal = check_request(headers, dict(headers), 16_384)
    assert refusal is not None
    assert (refusal.status.name, "'abc'" in refusal.message) == ("INTERNAL", True)
