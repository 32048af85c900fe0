"""One index batch written from a worker thread while another thread keeps the GIL busy
(as the asyncio island does under load), this tree's ``IndexStore.write`` against that of
another revision (``--ref``, default ``main``), rounds interleaved.

    .venv/bin/python bench/index_write_bench.py [--ref REF] [--rows 10] [--batches 150]

``sqlite3`` lets go of the GIL around every statement step; a thread that wants it back
while another thread is running Python waits for the switch interval (5 ms). A batch
written statement by statement pays that per row; one statement per batch pays it about
twice (the thread's start, the statement). Each sample is one batch: start a thread that
writes it, join it. Printed: p50/p99 per batch, idle and with the busy thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregate.domain.ids import AggregateKey, uuid7
from aggregate.query import index_store
from bench.before import load_at


def _batches(module: Any, path: Path, rows: int, batches: int) -> list[float]:
    store = module.IndexStore(path)
    keys = [AggregateKey("acme", "bank-account", uuid7()) for _ in range(64)]
    samples = []
    position = 0
    try:
        for i in range(batches):
            batch = []
            for j in range(rows):
                position += 1
                state = {"owner": "o", "balance": position}
                key = keys[(i * rows + j) % len(keys)]
                batch.append(module.ViewRow(key, position, position, "2026-01-01T00:00Z", state))
            marks = {"acme": position}
            started = time.perf_counter()
            writer = threading.Thread(target=lambda b=batch, m=marks: store.write(b, m))
            writer.start()
            writer.join()
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        store.close()
    return samples


def _pct(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="main")
    parser.add_argument("--rows", type=int, default=10, help="rows per batch")
    parser.add_argument("--batches", type=int, default=150, help="batches per round and tree")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    before = load_at(args.ref, "aggregate/query/index_store.py")
    trees = {"this": index_store, args.ref: before}
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            sum(range(50))

    with tempfile.TemporaryDirectory(prefix="index-write-") as tmp:
        for mode in ("idle", "busy"):
            spinner = threading.Thread(target=busy, daemon=True)
            if mode == "busy":
                stop.clear()
                spinner.start()
            got: dict[str, list[float]] = {name: [] for name in trees}
            for r in range(args.rounds):
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for name in order:
                    path = Path(tmp) / f"{mode}-{name.replace('/', '_')}-{r}.db"
                    got[name] += _batches(trees[name], path, args.rows, args.batches)
            stop.set()
            if mode == "busy":
                spinner.join()
            for name, samples in got.items():
                print(f"{mode:4}  {name:10}  batch of {args.rows}: {_pct(samples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
