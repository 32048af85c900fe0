"""Usage ingestion end to end: the real ``aggregate ingest --once`` process on a real
nats-server, the billing ledger in worker processes, balances read back from the stream.

The reference's smoke, a run killed with SIGKILL half-way, a re-read from scratch after the
progress is deleted, and two ingestors on one source at once: each idempotency key is
charged exactly once and every balance is exactly the sum of its records.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from tests.integration.ingest_harness import (
    CLI_TIMEOUT,
    consumed_entries,
    delete_progress,
    ingest_command,
    ingest_env,
    ledger,
    rec,
    run_ingest,
    write_batch,
)

if TYPE_CHECKING:
    from pathlib import Path

    from aggregate.adapters.nats_server import NatsServerProcess


PROGRESS = re.compile(r"ingest source (\S+): (\d+) records read")
FOREVER = {"AGGREGATE_COMMAND_HISTORY": "1", "AGGREGATE_DUPLICATE_WINDOW_MS": "100"}
"""A one-command history and a 100 ms duplicate window: repeats get past both, so what is
tested is the guarantee that holds forever, the ledger's own record of the keys it charged."""


def seed(root: Path, nodes: int, files: int, per_file: int, accounts: int) -> dict[str, int]:
    """Batch files of distinct records; the expected balance of every account."""
    expected: dict[str, int] = defaultdict(int)
    n = 0
    for node in range(nodes):
        for hour in range(files):
            records = []
            for _ in range(per_file):
                account = f"S-{n % accounts}"
                cost = 1 + n % 7
                records.append(rec(f"n{node}-h{hour}-{n}", cost, account))
                expected[account] -= cost
                n += 1
            write_batch(root, f"node{node}", f"usage_2026-01-01-{hour:02d}.toml", records)
    return dict(expected)


def check_exactly_once(url: str, expected: dict[str, int]) -> int:
    """Every account's balance is exact and no key was charged twice; the charge count."""
    charged = 0
    for account, balance in expected.items():
        book = ledger(url, account)
        assert book.doubled == [], f"{account}: charged twice: {book.doubled[:5]}"
        assert book.balance == balance, account
        charged += sum(book.charges.values())
    return charged


def test_the_reference_smoke(nats_server: NatsServerProcess, tmp_path: Path) -> None:
    url, root, storage = nats_server.url, tmp_path / "billing", tmp_path / "store"
    write_batch(
        root,
        "A",
        "usage_2026-01-01-00.toml",
        [rec("a-1", 120, "ann"), rec("a-2", 30, "bob"), rec("dup", 5, "ann", node_name="A")],
    )
    write_batch(
        root,
        "A",
        "usage_2026-01-01-01.toml",
        [rec("a-3", 7, "ann"), rec("dup", 5, "ann", node_name="A")],  # repeated across files
    )
    write_batch(root, "B", "usage_2026-01-01-00.json", [rec("b-1", 40, "bob")])
    env = ingest_env(root)

    first = run_ingest(storage, url, env)
    assert first.code == 0, first.stderr[-2000:]
    assert (first.summary["charged"], first.summary["already_charged"]) == (5, 1)
    assert ledger(url, "ann").balance == -(120 + 5 + 7)
    assert ledger(url, "bob").balance == -(30 + 40)
    assert ledger(url, "ann").charges["dup"] == 1
    entries = consumed_entries(url)
    assert sorted(e["idempotency_key"] for e in entries) == ["a-1", "a-2", "a-3", "b-1", "dup"]
    assert {e["idempotency_key"]: e["source"] for e in entries}["b-1"] == "B"

    second = run_ingest(storage, url, env)
    assert second.code == 0
    assert [s["status"] for s in second.summary["sources"]] == ["skipped", "skipped"]

    write_batch(root, "A", "usage_2026-01-01-02.toml", [rec("a-4", 9, "bob")])
    third = run_ingest(storage, url, env)
    assert [(s["source"], s["status"], s["records_read"]) for s in third.summary["sources"]] == [
        ("A", "consumed", 1),
        ("B", "skipped", 0),
    ]
    assert third.summary["charged"] == 1
    assert ledger(url, "bob").balance == -(30 + 40 + 9)


def test_a_bad_record_halts_only_its_source_until_fixed(
    nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    url, root, storage = nats_server.url, tmp_path / "billing", tmp_path / "store"
    bad = [rec("a-1", 10, "ann"), rec("a-2", "ten", "ann"), rec("a-3", 1, "ann")]
    path = write_batch(root, "A", "usage_2026-01-01-00.toml", bad)
    write_batch(root, "B", "usage_2026-01-01-00.toml", [rec("b-1", 2, "bob")])
    env = ingest_env(root)
    halted = run_ingest(storage, url, env)
    assert halted.code == 1
    a, b = halted.summary["sources"]
    assert (a["status"], b["status"]) == ("halted", "consumed")
    assert (a["error"]["file"], a["error"]["record_index"]) == ("usage_2026-01-01-00.toml", 1)
    assert "cost_cents" in a["error"]["reason"]
    assert ledger(url, "ann").balance == -10

    bad[1] = rec("a-2", 10, "ann")
    path.write_text(path.read_text().replace('"ten"', "10"))
    fixed = run_ingest(storage, url, env)
    assert fixed.code == 0, fixed.summary
    assert fixed.summary["charged"] == 2
    assert check_exactly_once(url, {"ann": -21, "bob": -2}) == 4


def test_sigkill_half_way_then_run_again(nats_server: NatsServerProcess, tmp_path: Path) -> None:
    url, root, storage = nats_server.url, tmp_path / "billing", tmp_path / "store"
    expected = seed(root, nodes=3, files=4, per_file=100, accounts=7)
    total = 3 * 4 * 100
    env = ingest_env(
        root, AGGREGATE_INGEST_PROGRESS_LOG_MS="1", AGGREGATE_INGEST_CONCURRENCY="4", **FOREVER
    )
    proc = subprocess.Popen(
        ingest_command(storage, url),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed_at: list[dict[str, Any]] = []
    assert proc.stderr is not None
    timer = threading.Timer(CLI_TIMEOUT, proc.kill)  # a bound, not a synchronisation
    timer.start()
    read: dict[str, int] = {}
    try:
        for raw in proc.stderr:
            line = json.loads(raw)
            progress = PROGRESS.search(line.get("message", ""))
            if progress is None:
                continue
            read[progress[1]] = int(progress[2])
            if sum(read.values()) >= total // 2:  # half the records read: kill it here
                proc.send_signal(signal.SIGKILL)
                killed_at.append(line)
                break
    finally:
        timer.cancel()
        code = proc.wait(30)
        proc.stderr.close()
    assert code == -signal.SIGKILL, "the run ended before it could be killed"
    assert killed_at, "no progress line seen"
    partial = sum(sum(ledger(url, a).charges.values()) for a in expected)
    assert 0 < partial < total, partial
    print(f"killed after {partial} of {total} records were charged")

    again = run_ingest(storage, url, env)
    assert again.code == 0, again.stderr[-2000:]
    assert again.summary["charged"] == total - partial
    assert check_exactly_once(url, expected) == total
    assert len(consumed_entries(url)) == total


def test_deleted_progress_and_a_reread_from_scratch_charge_nothing_twice(
    nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    url, root, storage = nats_server.url, tmp_path / "billing", tmp_path / "store"
    expected = seed(root, nodes=2, files=3, per_file=40, accounts=5)
    env = ingest_env(root, **FOREVER)
    first = run_ingest(storage, url, env)
    assert first.summary["charged"] == 240
    delete_progress(url)
    again = run_ingest(storage, url, env)
    assert again.code == 0
    assert [s["status"] for s in again.summary["sources"]] == ["consumed", "consumed"]
    assert (again.summary["charged"], again.summary["already_charged"]) == (0, 240)
    assert check_exactly_once(url, expected) == 240


def test_two_ingestors_on_one_source_at_once(
    nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    url, root = nats_server.url, tmp_path / "billing"
    expected = seed(root, nodes=1, files=3, per_file=80, accounts=4)
    env = ingest_env(root, AGGREGATE_INGEST_CONCURRENCY="8", **FOREVER)
    procs = [
        subprocess.Popen(
            ingest_command(tmp_path / f"store{i}", url),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=CLI_TIMEOUT) for p in procs]
    summaries = [json.loads(out) for out, _ in outputs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outputs]
    assert sum(s["charged"] for s in summaries) == 240
    assert check_exactly_once(url, expected) == 240


def test_an_unknown_source_is_a_usage_error(nats_server: NatsServerProcess, tmp_path: Path) -> None:
    write_batch(tmp_path / "billing", "A", "usage_x.toml", [rec("k", 1, "ann")])
    done = run_ingest(
        tmp_path / "s", nats_server.url, ingest_env(tmp_path / "billing"), "--source", "Z"
    )
    assert done.code == 2
    assert "no ingestion source is named 'Z'" in done.stderr
