"""The HPACK encoder of the gRPC server's header blocks (no dynamic table, no Huffman)."""

from __future__ import annotations

import hpack

from aggregate.adapters.grpc.server import _ResponseHeaderEncoder


def test_blocks_announce_an_empty_table_and_carry_values_verbatim() -> None:
    encoder = _ResponseHeaderEncoder()
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
