"""Benchmarks of the read side's index, each with a same-run comparison.

    .venv/bin/python bench/index_bench.py [--quick] [--rounds N] [--only NAME ...]

- ``throughput``: command throughput (32 unary clients) of the real service with the index
  on and off, interleaved in every round (the machine is noisy): the ratio on/off.
- ``lag``: index lag at a fixed offered rate (500 commands/s, open loop): for each
  acknowledged command, the time until a ``QueryAggregates`` with ``min_position`` = its
  position answers (ack -> visible, including one query round trip), p50/p99; beside it the
  round trip of the same query with ``min_position`` 0 in the same run.
- ``query``: latency of one page of 50 over an index file of 100,000 aggregates of one
  tenant (in process, SQLite only): the first page, a deep page by token (keyset), a
  selective filter on an indexed field (when the planner supports filters, else the same
  SQL written by hand through ``field_sql``, marked ``hand``), and an unindexed scan.
- ``rebuild``: full rebuild rate (aggregates/s) of the index from a real JetStream stream by
  batch direct get over ``tenant.*.aggregate.>`` (no consumer), with the bank rules.

Results go to ``bench/results/index-<timestamp>.json``; the table to stdout. ``--quick`` is
a smoke run (small counts, one round) to prove the scripts work; real figures need a quiet
machine and the default budget.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregate.config import example_manifest_path
from aggregate.domain.ids import AggregateKey, uuid7
from bench.procs import ROOT, ServiceProcess
from bench.workloads import TENANT, Plan, batch, service_unary

RESULTS = ROOT / "bench" / "results"
TYPE = "bank-account"


def pct(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"n": len(ordered), "p50": rank(0.5), "p99": rank(0.99), "max": round(ordered[-1], 3)}


# ---- throughput: index on vs off ---------------------------------------------------------
def throughput(work: Path, rounds: int, window_s: float) -> dict[str, Any]:
    plan = Plan(warmup_s=min(1.0, window_s / 4))
    manifest = example_manifest_path("bank")
    results: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(rounds):
        for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
            env = {
                "AGGREGATE_INDEX_ENABLED": "true" if mode == "on" else "false",
                "AGGREGATE_DEFAULT_TENANT_ID": TENANT,
            }
            svc = ServiceProcess(work / f"tp-{mode}-{r}", manifest, env=env)
            svc.start()
            try:
                accounts = [str(uuid7()) for _ in range(plan.clients)]
                batch(svc, "open", [(a, 1) for a in accounts])
                got = service_unary(svc, plan, accounts, plan.clients, window_s)
                results[mode].append(float(got["rate"]))
            finally:
                svc.stop()
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    return {"rates": results, "on": on, "off": off, "ratio": round(on / off, 3)}


# ---- lag: ack -> visible at a fixed rate -------------------------------------------------
async def _lag_client(host: str, port: int, rate: float, duration_s: float) -> dict[str, Any]:
    from grpclib.client import Channel

    from aggregate.gateway.v1 import aggregate_grpc, query_grpc
    from aggregate.gateway.v1 import aggregate_pb2 as pb
    from aggregate.gateway.v1 import query_pb2 as qpb

    meta = {"x-tenant-id": TENANT}
    channels = [Channel(host, port) for _ in range(4)]
    commands = [aggregate_grpc.CommandServiceStub(c) for c in channels]
    queries = [query_grpc.QueryServiceStub(c) for c in channels]
    accounts = [str(uuid7()) for _ in range(64)]
    for account in accounts:
        await commands[0].SubmitCommand(
            pb.SubmitCommandRequest(
                aggregate_type=TYPE,
                aggregate_id=account,
                payload_json=json.dumps({"type": "OpenAccount", "owner": "b"}),
            ),
            metadata=meta,
        )
    lags: list[float] = []
    plain: list[float] = []
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        stub = i % len(channels)
        try:
            reply = await commands[stub].SubmitCommand(
                pb.SubmitCommandRequest(
                    aggregate_type=TYPE,
                    aggregate_id=accounts[i % len(accounts)],
                    payload_json=json.dumps({"type": "Deposit", "amount": 1}),
                ),
                metadata=meta,
                timeout=10,
            )
            acked = time.perf_counter()
            await queries[stub].QueryAggregates(
                qpb.QueryAggregatesRequest(
                    aggregate_type=TYPE, page_size=1, min_position=reply.position
                ),
                metadata=meta,
                timeout=10,
            )
            lags.append((time.perf_counter() - acked) * 1000)
            if i % 5 == 0:
                started = time.perf_counter()
                await queries[stub].QueryAggregates(
                    qpb.QueryAggregatesRequest(aggregate_type=TYPE, page_size=1),
                    metadata=meta,
                    timeout=10,
                )
                plain.append((time.perf_counter() - started) * 1000)
        except Exception:  # counted, the run goes on
            errors += 1

    tasks = []
    start = time.perf_counter()
    total = int(rate * duration_s)
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    for channel in channels:
        channel.close()
    return {
        "offered_rate": rate,
        "ack_to_visible_ms": pct(lags),
        "query_rtt_ms": pct(plain),
        "errors": errors,
    }


def lag(work: Path, rate: float, duration_s: float) -> dict[str, Any]:
    svc = ServiceProcess(work / "lag", example_manifest_path("bank"), env={})
    svc.start()
    try:
        return asyncio.run(_lag_client("127.0.0.1", svc.grpc_port, rate, duration_s))
    finally:
        svc.stop()


# ---- query latency over 100,000 aggregates ----------------------------------------------
def query(work: Path, rows: int, repeat: int) -> dict[str, Any]:
    from aggregate.domain.errors import InvalidArgumentError
    from aggregate.query.index_store import IndexStore, ViewRow
    from aggregate.query.plan import (
        QueryLimits,
        QueryPlan,
        QueryRequest,
        Row,
        field_sql,
        index_statements,
        plan_query,
    )

    store = IndexStore(work / "query.db")
    rng = random.Random(7)
    views = [
        ViewRow(
            AggregateKey(TENANT, TYPE, uuid7()),
            3,
            i + 1,
            "2026-01-01T00:00:00.000Z",
            {"owner": f"o{rng.randrange(50_000)}", "balance": rng.randrange(100_000)},
        )
        for i in range(rows)
    ]
    built = time.perf_counter()
    store.write(views, {TENANT: rows})
    store.create_indexes(index_statements(TYPE, ["state.balance"]))
    build_s = time.perf_counter() - built
    limits, key = QueryLimits(), b"k" * 32

    def timed(make: Any) -> dict[str, float]:
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            make()
            samples.append((time.perf_counter() - started) * 1000)
        return pct(samples)

    def page(filter_text: str = "", token: str = "") -> list[Row]:
        plan = plan_query(
            QueryRequest(TENANT, TYPE, filter_text, "", 50, token), limits=limits, token_key=key
        )
        got, _ = plan.page(store.run(plan, max_steps=limits.max_sqlite_steps))
        return got

    first = plan_query(QueryRequest(TENANT, TYPE, "", "", 50, ""), limits=limits, token_key=key)
    _, token = first.page(store.run(first, max_steps=limits.max_sqlite_steps))
    deep_token = token
    for _ in range(200):  # 10,000 rows in
        plan = plan_query(
            QueryRequest(TENANT, TYPE, "", "", 50, deep_token), limits=limits, token_key=key
        )
        _, deep_token = plan.page(store.run(plan, max_steps=limits.max_sqlite_steps))
    out: dict[str, Any] = {"rows": rows, "build_s": round(build_s, 2)}
    out["first_page_ms"] = timed(lambda: page())
    out["deep_page_ms"] = timed(lambda: page(token=deep_token))
    selective = "state.balance = 4242"
    try:
        page(selective)
        out["selective_indexed_ms"] = timed(lambda: page(selective))
        out["selective_via"] = "planner"
    except InvalidArgumentError:
        balance = field_sql("state.balance")
        sql = (
            "SELECT aggregate_id, version, position, updated_at, state FROM views "
            f"WHERE tenant_id = ? AND aggregate_type = ? AND {balance} = ? "
            "ORDER BY aggregate_id LIMIT ?"
        )
        hand = QueryPlan(sql, (TENANT, TYPE, 4242, 51), 50, lambda _: "")
        out["selective_indexed_ms"] = timed(lambda: store.run(hand, max_steps=10**9))
        out["selective_via"] = "hand"
        plan_text = store.reader().execute("EXPLAIN QUERY PLAN " + sql, hand.params).fetchall()
        out["selective_plan"] = " | ".join(str(row[-1]) for row in plan_text)
    out["unindexed_scan_ms"] = timed(lambda: page('state.owner = "nobody"'))
    store.close()
    return out


# ---- full rebuild rate -------------------------------------------------------------------
async def _rebuild(work: Path, aggregates: int) -> dict[str, Any]:
    import anyio
    import nats

    from aggregate.adapters.jetstream import JetStreamEventStore, StreamPolicy, ensure_stream
    from aggregate.adapters.jetstream.stream_reader import JetStreamStreamReader
    from aggregate.adapters.nats_server import NatsServerProcess
    from aggregate.domain.context import RequestContext
    from aggregate.domain.envelopes import CommandRecord, events_from_decision
    from aggregate.programs.base import AggregateTypeSpec
    from aggregate.query.index_store import IndexStore
    from aggregate.query.replay import Replayer
    from aggregate.testing.programs import FunctionProgram, StaticTypes
    from specs import bank

    server = NatsServerProcess(store_dir=work / "nats")
    server.start()
    try:
        nc = await nats.connect(server.url)
        await ensure_stream(nc.jetstream(), StreamPolicy(name="BENCH_EVENTS"))
        store = JetStreamEventStore(nc, stream="BENCH_EVENTS")
        ctx = RequestContext.new()
        written = time.perf_counter()
        sem = asyncio.Semaphore(64)

        async def open_one() -> None:
            key = AggregateKey(TENANT, TYPE, uuid7())
            decided = [
                {"type": "AccountOpened", "owner": "b"},
                {"type": "MoneyDeposited", "amount": 5},
            ]
            record = CommandRecord(
                key, uuid7(), "", ctx.trace_id, 1, events_from_decision(decided, first_version=1)
            )
            async with sem:
                await store.append(record, expected_last_seq=0, context=ctx)

        await asyncio.gather(*(open_one() for _ in range(aggregates)))
        write_s = time.perf_counter() - written
        types = StaticTypes(
            {TYPE: AggregateTypeSpec(TYPE, FunctionProgram(TYPE, bank.decide, bank.apply))}
        )
        reader = JetStreamStreamReader(nc, stream="BENCH_EVENTS")
        index = IndexStore(work / "rebuild.db")
        replayer = Replayer(
            store=index, reader=reader, events=store, types=types, limiter=anyio.CapacityLimiter(1)
        )
        end = await reader.stream_end()
        started = time.perf_counter()
        stats = await replayer.replay(None, after=0, end=end, replayed_through=True)
        seconds = time.perf_counter() - started
        assert index.count(TENANT) == aggregates, "the rebuild lost aggregates"
        index.close()
        await reader.aclose()
        await store.aclose()
        await nc.close()
    finally:
        server.stop()
    return {
        "aggregates": aggregates,
        "messages": stats.messages,
        "write_s": round(write_s, 2),
        "rebuild_s": round(seconds, 3),
        "aggregates_per_s": round(aggregates / seconds),
        "reader": "batch direct get, tenant.*.aggregate.>, no consumer",
    }


def rebuild(work: Path, aggregates: int) -> dict[str, Any]:
    return asyncio.run(_rebuild(work, aggregates))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=("throughput", "lag", "query", "rebuild"))
    args = parser.parse_args()
    q = args.quick
    chosen = args.only or ["throughput", "lag", "query", "rebuild"]
    results: dict[str, Any] = {"quick": q}
    with tempfile.TemporaryDirectory(prefix="index-bench-") as tmp:
        work = Path(tmp)
        if "throughput" in chosen:
            results["throughput"] = throughput(work, 1 if q else args.rounds, 1.5 if q else 8.0)
        if "lag" in chosen:
            results["lag"] = lag(work, 500, 2.0 if q else 20.0)
        if "query" in chosen:
            results["query"] = query(work, 100_000, 50 if q else 1000)
        if "rebuild" in chosen:
            results["rebuild"] = rebuild(work, 2000 if q else 100_000)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"index-{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
