"""The watch hub's buffer and the UUID text cache: their cost per change and what they add to
a full garbage collection, before and after, in one run: ~30 s.

The service keeps the latest changes (``AGGREGATE_WATCH_BUFFER_CHANGES``, default 10,000)
in the watch hub for watches that resume, and the texts of recently rendered UUIDs. A full
(generation 2) collection of the cyclic garbage collector walks every tracked object that
is alive, on the command path's thread. In interleaved rounds, the same process measures:

- ``per change``: ``WatchHub.stored`` and the fan-out into a full buffer (no watcher), as
  the hub's code was at ``--ref`` (default ``main``) and as it is now;
- ``full collection, buffer full``: ``gc.collect()`` with only that hub's full buffer
  alive, before and after;
- ``full collection, UUID texts``: ``gc.collect()`` with the UUID text cache full
  (4,096 ids whose ``UUID`` objects nothing else holds), before and after.

Prints the medians and the ratio after/before::

    .venv/bin/python bench/watch_buffer_bench.py [--changes 10000] [--rounds 5] [--ref main]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregate.domain import ids
from aggregate.domain.envelopes import CommandRecord, events_from_decision
from aggregate.domain.ids import AggregateKey, uuid7
from aggregate.watch import hub as hub_now
from bench.before import load_at


def _old_hub(ref: str) -> Any:
    """``aggregate/watch/hub.py`` at ``ref``, importing ``changes.py`` at ``ref``."""
    old_changes = load_at(ref, "aggregate/watch/changes.py")
    saved = sys.modules["aggregate.watch.changes"]
    sys.modules["aggregate.watch.changes"] = old_changes
    try:
        return load_at(ref, "aggregate/watch/hub.py")
    finally:
        sys.modules["aggregate.watch.changes"] = saved


def _records(count: int) -> list[CommandRecord]:
    out = []
    for n in range(count):
        key = AggregateKey("acme", "bank-account", uuid7())
        events = events_from_decision([{"type": "Deposited", "amount": n}], first_version=n + 1)
        out.append(CommandRecord(key, uuid7(), "c", "t", n + 1, events))
    return out


def _fill(module: Any, records: list[CommandRecord]) -> tuple[Any, float]:
    """A hub of ``module`` with every record buffered; microseconds per change."""
    hub = module.WatchHub(module.WatchLimits(buffer_changes=len(records)))
    started = time.perf_counter()
    for position, record in enumerate(records, 1):
        hub.stored(hub.begin(), position, record, {"balance": position, "owner": "x"})
        ready, hub._ready = hub._ready, []  # what ``serve`` does, without a loop
        for change, ticket in ready:
            hub._fan_out(change, ticket)
    elapsed = time.perf_counter() - started
    assert hub.buffered[0] == len(records)
    return hub, elapsed / len(records) * 1e6


def _collect_ms() -> float:
    started = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ref", default="main")
    args = parser.parse_args()
    modules = {"before": _old_hub(args.ref), "after": hub_now}
    old_ids = load_at(args.ref, "aggregate/domain/ids.py")
    texts = {"before": old_ids.uuid_text, "after": ids.uuid_text}
    rows: dict[str, dict[str, list[float]]] = {}
    gc.freeze()  # as the service does after start-up: the modules are not walked
    for _ in range(args.rounds):
        for name in ("before", "after", "after", "before"):
            records = _records(args.changes)
            hub, per_change = _fill(modules[name], records)
            del records
            gc.collect()
            row = rows.setdefault(name, {"per change": [], "buffer": [], "texts": []})
            row["per change"].append(per_change)
            row["buffer"].append(statistics.median(_collect_ms() for _ in range(3)))
            del hub
            gc.collect()
            render = texts[name]
            for _ in range(ids.UUID_TEXTS_KEPT):
                render(uuid.uuid4())
            row["texts"].append(statistics.median(_collect_ms() for _ in range(3)))
            if hasattr(render, "cache_clear"):
                render.cache_clear()
            else:
                ids._uuid_texts.clear()
            gc.collect()
    print(f"{args.changes} changes buffered; {args.rounds} rounds, medians")
    print("| measure | before | after | after/before |")
    print("|---|---|---|---|")
    labels = {
        "per change": "stored + fan-out, per change (us)",
        "buffer": "full collection, buffer full (ms)",
        "texts": "full collection, UUID texts full (ms)",
    }
    for item, label in labels.items():
        before = statistics.median(rows["before"][item])
        after = statistics.median(rows["after"][item])
        print(f"| {label} | {before:.2f} | {after:.2f} | {after / before:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
