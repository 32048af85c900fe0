"""Planning and SQLite time of read-side queries over 100,000 views of one tenant.

Run once, by hand: ``.venv/bin/python bench/query_plan.py [rows]``. Prints p50/p99 of
planning a typical filter, of a selective filter on an indexed path (page of 50), and of
an unindexed scan, and the SQLite instructions the scan needs (for ``max_sqlite_steps``).
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aggregate.query.plan import (
    PROGRESS_INTERVAL,
    QueryLimits,
    QueryRequest,
    index_statements,
    plan_query,
    run_bounded,
)

SCHEMA = """CREATE TABLE views (tenant_id TEXT NOT NULL, aggregate_type TEXT NOT NULL,
aggregate_id TEXT NOT NULL, version INTEGER NOT NULL, position INTEGER NOT NULL,
updated_at TEXT NOT NULL, state TEXT NOT NULL,
PRIMARY KEY (tenant_id, aggregate_type, aggregate_id))"""
LIMITS = QueryLimits()
KEY = b"k" * 32


def percentiles(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {q[49] * 1e3:.3f} ms, p99 {q[98] * 1e3:.3f} ms"


def timed(n: int, fn: object) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "views.sqlite")
        conn.execute(SCHEMA)
        conn.executemany(
            "INSERT INTO views VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    "acme",
                    "account",
                    str(uuid.uuid4()),
                    1 + i % 9,
                    i,
                    "2026-01-01T00:00:00.000Z",
                    json.dumps({"balance": i % 10_000, "owner": f"owner-{i % 97}"}),
                )
                for i in range(rows)
            ),
        )
        for statement in index_statements("account", ["state.balance"]):
            conn.execute(statement)
        conn.execute("ANALYZE")
        conn.commit()
        typical = 'state.balance >= 100 AND state.balance < 110 AND state.owner != "owner-3"'
        req = QueryRequest("acme", "account", typical, "state.balance desc", 50, "")
        print(f"{rows} rows")
        print(
            "plan:", percentiles(timed(2000, lambda: plan_query(req, limits=LIMITS, token_key=KEY)))
        )
        selective = QueryRequest("acme", "account", "state.balance = 4242", "", 50, "")
        plan = plan_query(selective, limits=LIMITS, token_key=KEY)
        print(
            "selective indexed, page of 50:",
            percentiles(
                timed(500, lambda: run_bounded(conn, plan, max_steps=LIMITS.max_sqlite_steps))
            ),
        )
        scan = plan_query(
            QueryRequest("acme", "account", 'state.owner = "owner-5"', "", 50, ""),
            limits=LIMITS,
            token_key=KEY,
        )
        full = plan_query(
            QueryRequest("acme", "account", 'state.owner = "nobody"', "", 50, ""),
            limits=LIMITS,
            token_key=KEY,
        )
        print(
            "unindexed, page of 50:",
            percentiles(
                timed(50, lambda: run_bounded(conn, scan, max_steps=LIMITS.max_sqlite_steps))
            ),
        )
        print(
            "unindexed, no match (whole scan):",
            percentiles(
                timed(20, lambda: run_bounded(conn, full, max_steps=LIMITS.max_sqlite_steps))
            ),
        )
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += PROGRESS_INTERVAL
            return 0

        conn.set_progress_handler(count, PROGRESS_INTERVAL)
        conn.execute(full.sql, full.params).fetchall()
        print(f"whole scan: about {steps:,} SQLite instructions")


if __name__ == "__main__":
    main()
