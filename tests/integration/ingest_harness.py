"""Helpers for the ingestion tests: batch files, the real ``aggregate ingest --once``
process, and the ledger as the event stream holds it (read straight from JetStream)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aggregate.adapters.jetstream.reader import read_events
from aggregate.domain.ids import AggregateKey
from aggregate.ingest.records import account_aggregate_id

if TYPE_CHECKING:
    from pathlib import Path

TENANT = "acme"
LEDGER = "billing-account"
CLI_TIMEOUT = 180.0


def rec(key: str, cost: int, account: str, **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key, "cost_cents": cost, "user_sid": account, **extra}


def toml_batch(records: list[dict[str, Any]]) -> str:
    lines = []
    for r in records:
        lines.append("[[records]]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in r.items())
    return "\n".join(lines) + "\n"


def write_batch(root: Path, node: str, name: str, records: list[dict[str, Any]]) -> Path:
    path = root / "nodes" / node / name
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"records": records}) if name.endswith(".json") else toml_batch(records)
    path.write_text(text)
    return path


def ingest_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATE_")}
    env["AGGREGATE_INGEST_SOURCES"] = json.dumps(
        [{"kind": "directory", "root": str(root), "tenant": TENANT}]
    )
    env.update(extra)
    return env


def ingest_command(storage: Path, nats_url: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "aggregate.cli",
        "ingest",
        "--once",
        "--example",
        "billing",
        "--storage",
        str(storage),
        "--nats-url",
        nats_url,
        *args,
    ]


@dataclass
class IngestRun:
    code: int
    summary: dict[str, Any]
    stderr: str


def run_ingest(storage: Path, nats_url: str, env: dict[str, str], *args: str) -> IngestRun:
    done = subprocess.run(
        ingest_command(storage, nats_url, *args),
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    summary = json.loads(done.stdout) if done.stdout.strip() else {}
    return IngestRun(done.returncode, summary, done.stderr)


@dataclass
class Ledger:
    """An account's ledger as the stream holds it."""

    charges: Counter[str]
    balance: int

    @property
    def doubled(self) -> list[str]:
        return sorted(k for k, n in self.charges.items() if n > 1)


def ledger(nats_url: str, account: str, tenant: str = TENANT) -> Ledger:
    key = AggregateKey(tenant, LEDGER, account_aggregate_id(tenant, account))
    events = read_events([nats_url], "AGGREGATE_EVENTS", key, timeout=20)
    charges: Counter[str] = Counter()
    balance = 0
    for event in events:
        if event["event_type"] == "UsageCharged":
            charges[event["payload"]["idempotency_key"]] += 1
            balance -= event["payload"]["cost_cents"]
    return Ledger(charges, balance)


def consumed_entries(nats_url: str, tenant: str = TENANT) -> list[dict[str, Any]]:
    """Every entry of the consumed-record index, paged as the admin route pages it."""
    import asyncio

    import nats

    from aggregate.ingest.kv import NatsConsumedIndex

    async def read() -> list[dict[str, Any]]:
        nc = await nats.connect(nats_url, connect_timeout=5)
        try:
            index = NatsConsumedIndex(nc, "AGGREGATE_INGEST_CONSUMED", timeout_s=5)
            out: list[dict[str, Any]] = []
            after = 0
            while True:
                page = await index.page(tenant, after=after, limit=500, source=None)
                out.extend(entry.as_dict() for _, entry in page.entries)
                if page.next_after is None:
                    return out
                after = page.next_after
        finally:
            await nc.close()

    return asyncio.run(read())


def delete_progress(nats_url: str) -> None:
    """Drop every source's progress (the bucket itself)."""
    import asyncio

    import nats

    async def drop() -> None:
        nc = await nats.connect(nats_url, connect_timeout=5)
        try:
            await nc.jetstream(timeout=5).delete_key_value("AGGREGATE_INGEST_PROGRESS")
        finally:
            await nc.close()

    asyncio.run(drop())
