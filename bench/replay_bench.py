"""Replay cost per stored event, before and after, in one run: ~1 min.

Writes one bank account with ``--events`` events (one a message) to an embedded
nats-server, then, in interleaved rounds, reads them all back with batch direct get and
decodes each record, the way a cold load without snapshot (or an index rebuild) does:

- ``before``: the direct-get reader and the record decoder as they were at ``--ref``
  (default ``main``), on a connection with nats-py's own header parser;
- ``after``: today's code (its connection parses headers with
  ``aggregate.adapters.jetstream.headers``).

Also, in process, the two halves alone: parsing one stored message's header block, and
decoding one record. Prints the median per event of each and the ratio after/before.
Programs are not run (apply is measured by ``bench/rehydrate_bench.py``)::

    .venv/bin/python bench/replay_bench.py [--events 2000] [--rounds 5] [--ref main]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import nats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregate.adapters.jetstream import JetStreamEventStore, StreamPolicy, ensure_stream
from aggregate.adapters.jetstream import headers as header_parsing
from aggregate.adapters.jetstream.direct_get import DirectGetClient
from aggregate.adapters.nats_server import NatsServerProcess
from aggregate.domain.envelopes import CommandRecord
from aggregate.domain.ids import AggregateKey, uuid7
from bench.before import load_at
from bench.rehydrate_bench import write_history


async def _read(direct: Any, decode: Any, key: AggregateKey) -> float:
    started = time.perf_counter()
    messages = await direct.read_subject(key.subject, 1)
    records = [decode(m.data, expected_key=key) for m in messages]
    elapsed = time.perf_counter() - started
    assert len(records) == len(messages) > 0
    return elapsed / len(records) * 1e6


def _per_call_us(fn: Any, number: int = 2000) -> float:
    return timeit.timeit(fn, number=number) / number * 1e6


async def main(events: int, rounds: int, ref: str) -> None:
    old_direct = load_at(ref, "aggregate/adapters/jetstream/direct_get.py")
    old_envelopes = load_at(ref, "aggregate/domain/envelopes.py")
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServerProcess(store_dir=Path(tmp) / "nats")
        server.start()
        try:
            writer = await nats.connect(server.url)
            await ensure_stream(writer.jetstream(), StreamPolicy())
            store = JetStreamEventStore(writer)
            key = AggregateKey("bench", "bank-account", uuid7())
            await write_history(store, key, events)
            plain = await nats.connect(server.url)  # nats-py's own header parser
            fast = await nats.connect(server.url)
            before = old_direct.DirectGetClient(plain, "AGGREGATE_EVENTS")
            after = DirectGetClient(fast, "AGGREGATE_EVENTS")
            assert fast._parse_header_lines is header_parsing.parse_header_lines
            assert plain._parse_header_lines is not header_parsing.parse_header_lines
            sample = (await after.read_subject(key.subject, 1))[events // 2]
            block = b"".join(f"{k}: {v}\r\n".encode() for k, v in sample.headers.items())
            block += b"\r\n"
            assert header_parsing.parse_header_lines(block) == dict(sample.headers)
            old_decode = old_envelopes.CommandRecord.decode
            await _read(before, old_decode, key)  # warm both paths
            await _read(after, CommandRecord.decode, key)
            rows: dict[str, list[float]] = {}
            for _ in range(rounds):
                one = {
                    "read+decode before": await _read(before, old_decode, key),
                    "read+decode after": await _read(after, CommandRecord.decode, key),
                    "headers before": _per_call_us(lambda: plain._parse_header_lines(block)),
                    "headers after": _per_call_us(lambda: fast._parse_header_lines(block)),
                    "decode before": _per_call_us(
                        lambda: old_decode(sample.data, expected_key=key)
                    ),
                    "decode after": _per_call_us(
                        lambda: CommandRecord.decode(sample.data, expected_key=key)
                    ),
                }
                for name, value in one.items():
                    rows.setdefault(name, []).append(value)
            for client in (before, after):
                await client.aclose()
            await store.aclose()
            for nc in (writer, plain, fast):
                await nc.close()
        finally:
            server.stop()
    print(
        f"\nreplay of {events} events, {len(sample.headers)} headers each; "
        f"median of {rounds} interleaved rounds (us per event):"
    )
    for part in ("read+decode", "headers", "decode"):
        old = statistics.median(rows[f"{part} before"])
        new = statistics.median(rows[f"{part} after"])
        ratios = [a / b for a, b in zip(rows[f"{part} after"], rows[f"{part} before"], strict=True)]
        print(
            f"  {part:12} before {old:7.1f}  after {new:7.1f}  after/before "
            f"{statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ref", default="main", help="the git revision to compare with")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rounds, args.ref))
