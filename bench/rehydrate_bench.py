"""Cold load of one long aggregate, with and without a snapshot (DESIGN §1 step 2, §5).

Writes one bank account with N events (one event a command, straight through the
JetStream store) to an embedded nats-server, then measures a cold ``CommandHandler.get``
(empty cache, so snapshot + tail are read and applied) with: no snapshot store; a SQLite
snapshot at the last version; a SQLite snapshot 100 events behind. The Starlark bank
program runs ``inline`` and, for comparison, in worker processes.

Run: ``.venv/bin/python bench/rehydrate_bench.py [--events 10000] [--repeat 7]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import nats

from aggregate.adapters.jetstream import JetStreamEventStore, StreamPolicy, ensure_stream
from aggregate.adapters.nats_server import NatsServerProcess
from aggregate.adapters.sqlite_snapshots import SqliteSnapshotStore
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.config import example_manifest_path, load_manifest
from aggregate.domain.aggregate import AggregateInstance
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import CommandRecord, events_from_decision
from aggregate.domain.ids import AggregateKey, uuid7
from aggregate.programs.base import AggregateTypeSpec
from aggregate.programs.pool import WorkerPool
from aggregate.programs.starlark_program import StarlarkInlineProgram, StarlarkProcessProgram
from aggregate.testing.programs import StaticTypes

TYPE = "bank-account"
CTX = RequestContext.new()


async def write_history(store: JetStreamEventStore, key: AggregateKey, events: int) -> None:
    seq = 0
    for version in range(1, events + 1):
        decided = (
            [{"type": "AccountOpened", "owner": "bench"}]
            if version == 1
            else [{"type": "MoneyDeposited", "amount": 1}]
        )
        record = CommandRecord(
            key,
            uuid7(),
            "bench",
            CTX.trace_id,
            version,
            events_from_decision(decided, first_version=version),
        )
        seq = await store.append(record, expected_last_seq=seq, context=CTX)


async def cold_get(
    store: JetStreamEventStore, program: Any, key: AggregateKey, snapshots: Any, repeat: int
) -> list[float]:
    times = []
    for _ in range(repeat):
        handler = CommandHandler(
            store=store,
            types=StaticTypes({TYPE: AggregateTypeSpec(TYPE, program)}),
            snapshots=snapshots,
            settings=HandlerSettings(snapshot_threshold=0),
        )
        started = time.perf_counter()
        view = await handler.get(key)
        times.append(time.perf_counter() - started)
        assert view.state["balance"] == view.version - 1
    return times


async def snapshot_at(
    store: JetStreamEventStore, program: Any, key: AggregateKey, path: Path, behind: int
) -> SqliteSnapshotStore:
    """A snapshot store holding ``key`` at its last version minus ``behind`` events."""
    records = await store.read(key)
    keep = [r for r in records if r.record.last_version <= len(records) - behind]
    instance = AggregateInstance.new(key, {}, history_limit=1000)
    state = await program.apply({}, [e.as_program_value() for r in keep for e in r.record.events])
    instance.advance(keep, state)
    snapshots = await SqliteSnapshotStore.open(path)
    await snapshots.save(instance.snapshot())
    return snapshots


async def main(events: int, repeat: int) -> None:
    spec = load_manifest(example_manifest_path("bank")).types[TYPE]
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServerProcess(store_dir=Path(tmp) / "nats")
        server.start()
        try:
            nc = await nats.connect(server.url)
            await ensure_stream(nc.jetstream(), StreamPolicy())
            store = JetStreamEventStore(nc)
            key = AggregateKey("bench", TYPE, uuid7())
            started = time.perf_counter()
            await write_history(store, key, events)
            print(f"wrote {events} events in {time.perf_counter() - started:.1f} s")
            async with WorkerPool() as pool:
                programs = {
                    "inline": StarlarkInlineProgram(TYPE, spec.decide, spec.apply),
                    "process": StarlarkProcessProgram(TYPE, spec.decide, spec.apply, pool),
                }
                rows = []
                for name, program in programs.items():
                    full = await snapshot_at(store, program, key, Path(tmp) / f"full-{name}", 0)
                    tail = await snapshot_at(store, program, key, Path(tmp) / f"tail-{name}", 100)
                    for label, snaps in (
                        ("no snapshot", None),
                        ("snapshot at last version", full),
                        ("snapshot 100 events behind", tail),
                    ):
                        times = await cold_get(store, program, key, snaps, repeat)
                        rows.append((name, label, statistics.median(times), min(times)))
                    await full.aclose()
                    await tail.aclose()
            await store.aclose()
            await nc.close()
        finally:
            server.stop()
    print(f"\ncold load of one aggregate with {events} events (median of {repeat}):")
    print(f"{'program':8} {'snapshot':28} {'median ms':>10} {'min ms':>8}")
    for name, label, median, best in rows:
        print(f"{name:8} {label:28} {median * 1000:10.1f} {best * 1000:8.1f}")
    base = {name: med for name, label, med, _ in rows if label == "no snapshot"}
    for name, label, median, _ in rows:
        if label != "no snapshot":
            print(f"  {name}: {label}: {base[name] / median:.0f}x faster than a full replay")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    anyio.run(main, args.events, args.repeat, backend="asyncio")
