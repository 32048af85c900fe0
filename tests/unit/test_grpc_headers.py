"""The gRPC server's header blocks: the HPACK encoder of its responses (no dynamic table, no
Huffman) and the transport's accounting of a request's header list."""

from __future__ import annotations

import hpack
import pytest

from aggregate.adapters.grpc.transport import ResponseHeaderEncoder, check_request


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
