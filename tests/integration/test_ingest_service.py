"""Ingestion inside ``aggregate serve`` (periodic runs, the admin routes) and the JetStream
source, on real NATS."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

import nats

from tests.integration.ingest_harness import (
    TENANT,
    ingest_env,
    ledger,
    rec,
    run_ingest,
    write_batch,
)
from tests.integration.service_harness import running_service

if TYPE_CHECKING:
    from pathlib import Path

    from aggregate.adapters.nats_server import NatsServerProcess

TOKEN = "ingest-test-token-8f3a"


def test_serve_runs_the_ingestor_and_the_admin_routes_show_it(
    nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    root = tmp_path / "billing"
    write_batch(root, "A", "usage_2026-01-01-00.toml", [rec(f"a{i}", 2, "ann") for i in range(5)])
    write_batch(root, "B", "usage_2026-01-01-00.toml", [rec("b0", 3, "bob")])
    env = ingest_env(root, AGGREGATE_NATS_URL=nats_server.url, AGGREGATE_ADMIN_TOKEN=TOKEN)
    with running_service(tmp_path / "store", env=env, example="billing") as service:
        service.wait_for_log("ingest run: 2 sources, 6 records charged")  # the first periodic run
        assert ledger(nats_server.url, "ann").balance == -10

        status, _ = service.http_call("POST", "/admin/ingest/run", {})
        assert status == 401  # bearer-gated
        write_batch(root, "A", "usage_2026-01-01-01.toml", [rec("a9", 4, "bob")])
        status, summary = service.http_call("POST", "/admin/ingest/run", {"source": "A"}, TOKEN)
        assert status == 200, summary
        assert [(s["source"], s["charged"]) for s in summary["sources"]] == [("A", 1)]

        status, sources = service.http_call("GET", "/admin/ingest/sources", token=TOKEN)
        assert status == 200
        by_name = {s["source"]: s for s in sources}
        assert by_name["A"]["records_consumed_total"] == 6
        assert by_name["A"]["files_consumed"] == 2
        assert by_name["B"]["last_error"] is None

        keys: list[str] = []
        after = 0
        while True:
            status, page = service.http_call(
                "GET",
                f"/admin/ingest/consumed?tenant=acme&source=A&after={after}&limit=2",
                token=TOKEN,
            )
            assert status == 200, page
            assert len(page["records"]) <= 2
            keys += [r["idempotency_key"] for r in page["records"]]
            if page["next_after"] is None:
                break
            after = page["next_after"]
        assert sorted(keys) == ["a0", "a1", "a2", "a3", "a4", "a9"]

        for bad in ("after=-1", "limit=0", "limit=5000", "source=a%20b", "tenant=%2F"):
            status, body = service.http_call("GET", f"/admin/ingest/consumed?{bad}", token=TOKEN)
            assert status == 400, (bad, body)
        status, body = service.http_call("POST", "/admin/ingest/run", {"source": "Z"}, TOKEN)
        assert status == 400
        assert "no ingestion source" in body["error"]
        status, body = service.http_call("POST", "/admin/ingest/run", {"when": 1}, TOKEN)
        assert status == 400
        status, text = service.http_call("GET", "/metrics")
        assert (
            'aggregate_ingest_records_total{outcome="charged",source="A",tenant_id="acme"} 6.0'
            in text
        )


async def _publish(url: str, stream: str, batches: list[bytes]) -> list[int]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=5)
        with contextlib.suppress(nats.js.errors.BadRequestError):  # made by an earlier call
            await js.add_stream(name=stream, subjects=["usage.>"])
        return [(await js.publish("usage.node-c", b)).seq for b in batches]
    finally:
        await nc.close()


async def _delete(url: str, stream: str, seq: int) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream(timeout=5).delete_msg(stream, seq)
    finally:
        await nc.close()


def batch(*records: dict[str, Any]) -> bytes:
    return json.dumps({"records": list(records)}).encode()


def test_a_jetstream_source_charges_once_and_halts_on_a_bad_message(
    nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    url = nats_server.url
    env = ingest_env(tmp_path / "none")
    env["AGGREGATE_INGEST_SOURCES"] = json.dumps(
        [{"kind": "jetstream", "name": "node-c", "stream": "USAGE", "subject": "usage.node-c",
          "tenant": TENANT}]
    )  # fmt: skip
    env["AGGREGATE_INGEST_FETCH_TIMEOUT_MS"] = "300"
    asyncio.run(
        _publish(
            url,
            "USAGE",
            [batch(rec("c1", 5, "cat"), rec("c2", 6, "cat")), batch(rec("c1", 5, "cat"))],
        )
    )
    first = run_ingest(tmp_path / "s", url, env)
    assert first.code == 0, first.stderr[-2000:]
    assert (first.summary["charged"], first.summary["already_charged"]) == (2, 1)
    again = run_ingest(tmp_path / "s", url, env)
    assert again.summary["sources"][0]["status"] == "skipped"

    seqs = asyncio.run(
        _publish(url, "USAGE", [b'{"records": [{"cost_cents": 1}]}', batch(rec("c3", 7, "cat"))])
    )
    halted = run_ingest(tmp_path / "s", url, env)
    assert halted.code == 1
    error = halted.summary["sources"][0]["error"]
    assert (error["stream_seq"], error["record_index"]) == (seqs[0], 0)
    assert ledger(url, "cat").balance == -11  # c3 waits behind the bad message

    asyncio.run(_delete(url, "USAGE", seqs[0]))  # the operator removes the bad message
    fixed = run_ingest(tmp_path / "s", url, env)
    assert fixed.code == 0, fixed.summary
    assert fixed.summary["charged"] == 1
    book = ledger(url, "cat")
    assert (book.balance, book.doubled) == (-18, [])
