"""Benchmark of the JetStream event store against its own embedded nats-server.

Measures (DESIGN §4.3, §4.5):
- conditional append latency: one command of one event, sequential, on one aggregate;
- ``last_seq`` (direct get of a subject's last message);
- reading back one aggregate's events from a stream of ~100k messages, with batch direct
  get (the store's default) and with the per-message direct-get fallback; the "messages
  only" row is the transport alone, without decoding the records.

Run from the repository root (``PYTHONPATH`` is not needed once the package is installed):
``PYTHONPATH=. .venv/bin/python bench/store_bench.py --messages 100000 --events 1000``.
Everything runs on a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import nats

from aggregate.adapters.jetstream import (
    DirectGetClient,
    JetStreamEventStore,
    StreamPolicy,
    ensure_stream,
)
from aggregate.adapters.nats_server import NatsServerProcess
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import CommandRecord, events_from_decision
from aggregate.domain.ids import AggregateKey, uuid7

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.js import JetStreamContext

CTX = RequestContext.new()


def command(key: AggregateKey, version: int) -> CommandRecord:
    return CommandRecord(
        key=key,
        command_id=uuid7(),
        correlation_id=CTX.correlation_id,
        trace_id=CTX.trace_id,
        first_version=version,
        events=events_from_decision(
            [{"type": "Deposited", "amount": version, "memo": "bench"}], first_version=version
        ),
    )


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def timed(action: Callable[[], Awaitable[object]], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def fill_stream(
    js: JetStreamContext, target: AggregateKey, total: int, target_events: int
) -> None:
    """``total`` messages: ``target_events`` commands of ``target`` spread evenly among
    commands of 997 other aggregates (published without conditions, pipelined)."""
    others = [AggregateKey("bench", "account", uuid7()) for _ in range(997)]
    versions = dict.fromkeys(others, 1)
    every = max(1, total // target_events)
    target_version = 1
    pending = []
    for i in range(total):
        if i % every == 0 and target_version <= target_events:
            rec = command(target, target_version)
            target_version += 1
        else:
            key = others[i % len(others)]
            rec = command(key, versions[key])
            versions[key] += 1
        pending.append(await js.publish_async(rec.key.subject, rec.encode()))
        if len(pending) >= 2000:
            for future in pending:
                await future
            pending.clear()
    for future in pending:
        await future


def row(name: str, samples: list[float]) -> str:
    return (
        f"{name:<44} {len(samples):>6} {statistics.median(samples):>9.3f} "
        f"{percentile(samples, 0.99):>9.3f} {min(samples):>9.3f}"
    )


async def main(messages: int, events: int, appends: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServerProcess(store_dir=Path(tmp) / "nats", name="bench")
        server.start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream(timeout=10)
            await ensure_stream(js, StreamPolicy())
            store = JetStreamEventStore(nc)
            fallback = JetStreamEventStore(nc, use_batch_get=False)

            key = AggregateKey("bench", "account", uuid7())
            last = 0
            append_ms: list[float] = []
            for version in range(1, appends + 1):
                rec = command(key, version)
                start = time.perf_counter()
                last = await store.append(rec, expected_last_seq=last, context=CTX)
                append_ms.append((time.perf_counter() - start) * 1000)

            target = AggregateKey("bench", "account", uuid7())
            start = time.perf_counter()
            await fill_stream(js, target, messages, events)
            fill_s = time.perf_counter() - start
            info = await js.stream_info("AGGREGATE_EVENTS")
            assert len(await store.read(target)) == events

            last_ms = await timed(lambda: store.last_seq(target), 200)
            batch_ms = await timed(lambda: store.read(target), 20)
            direct = DirectGetClient(nc, "AGGREGATE_EVENTS")
            raw_ms = await timed(lambda: direct.read_subject(target.subject, 1), 20)
            await direct.aclose()
            fallback_ms = await timed(lambda: fallback.read(target), 3)
            assert await fallback.read(target) == await store.read(target)

            print(
                f"nats-server {server.binary}, stream of {info.state.messages} messages "
                f"(filled in {fill_s:.1f}s), target aggregate {events} events"
            )
            print(f"{'operation (ms)':<44} {'n':>6} {'p50':>9} {'p99':>9} {'min':>9}")
            print(row("conditional append, 1 event, sequential", append_ms))
            print(row("last_seq (direct get last_by_subj)", last_ms))
            print(row(f"read {events} events: batch direct get", batch_ms))
            print(row("  (messages only, no decoding)", raw_ms))
            print(row(f"read {events} events: per-message direct get", fallback_ms))
            await store.aclose()
            await fallback.aclose()
            await nc.close()
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--appends", type=int, default=2000)
    args = parser.parse_args()
    anyio.run(main, args.messages, args.events, args.appends, backend="asyncio")
