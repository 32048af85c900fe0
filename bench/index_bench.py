"""Benchmarks of the read side's index, each with a same-run comparison.

    .venv/bin/python bench/index_bench.py [--quick] [--rounds N] [--only NAME ...]

- ``throughput``: command throughput (32 unary clients) of the real service with the index
  on and off, interleaved in every round (the machine is noisy): the ratio on/off.
- ``lag``: index lag at a fixed offered rate (500 commands/s, open loop, 4 connections,
  64 accounts of one tenant), measured two ways in the same run:

  * client side, on a sample of the commands (1 in 10, ``--lag-sample``): the time from the
    acknowledgement until a ``QueryAggregates`` with ``min_position`` = its position
    answers (ack -> visible, including one query round trip), p50/p99;
  * service side: the change of the ``aggregate_index_visible_lag_seconds`` histogram
    between two scrapes of ``/metrics`` around the run (every command's commit -> visible,
    no query involved); p50/p99 estimated from the buckets, linear within a bucket.

  Beside them, the round trip of a plain query (``min_position`` 0) after 1 command in 50
  (``--lag-plain-every``) and the commands' own latency from their scheduled send time.
  Sampling keeps the probe's load small: a query after every command (``--lag-sample 1
  --lag-plain-every 5``, the earlier method) offers 1,100 requests/s to a service whose
  unary capacity here is ~850/s, and then measures the overload rather than the index.
  ``--profile`` runs py-spy (non-blocking) on the service during the run.
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
LAG_HISTOGRAM = "aggregate_index_visible_lag_seconds"


def histogram_buckets(text: str, name: str) -> list[tuple[float, float]]:
    """``(le, cumulative count)`` of histogram ``name`` in a Prometheus text page."""
    prefix = name + '_bucket{le="'
    out = []
    for line in text.splitlines():
        if line.startswith(prefix):
            le, _, rest = line[len(prefix) :].partition('"')
            out.append((float(le), float(rest.rsplit(" ", 1)[1])))
    return out


def bucket_quantiles(
    before: list[tuple[float, float]], after: list[tuple[float, float]]
) -> dict[str, float]:
    """p50/p99 (ms) of the observations between two scrapes of one histogram, estimated
    from its buckets as Prometheus' ``histogram_quantile`` does (linear within a bucket)."""
    counts = dict(before)
    delta = [(le, n - counts.get(le, 0.0)) for le, n in after]
    total = delta[-1][1] if delta else 0.0
    if total <= 0:
        return {"n": 0}

    def quantile(q: float) -> float:
        rank = q * total
        lower, below = 0.0, 0.0
        for le, n in delta:
            if n >= rank:
                if le == float("inf"):
                    return lower * 1000  # beyond the last bucket: its lower bound
                return (lower + (le - lower) * (rank - below) / max(n - below, 1e-9)) * 1000
            lower, below = le, n
        return lower * 1000

    return {"n": int(total), "p50": round(quantile(0.5), 2), "p99": round(quantile(0.99), 2)}


async def _lag_client(
    host: str, port: int, rate: float, duration_s: float, *, sample: int, plain_every: int
) -> dict[str, Any]:
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
    acks: list[float] = []
    errors = 0

    async def one(i: int, scheduled: float) -> None:
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
            acks.append((acked - scheduled) * 1000)
            if i % sample == 0:
                await queries[stub].QueryAggregates(
                    qpb.QueryAggregatesRequest(
                        aggregate_type=TYPE, page_size=1, min_position=reply.position
                    ),
                    metadata=meta,
                    timeout=10,
                )
                lags.append((time.perf_counter() - acked) * 1000)
            if plain_every and i % plain_every == 1:
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
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    for channel in channels:
        channel.close()
    return {
        "offered_rate": rate,
        "sampled_one_in": sample,
        "plain_query_one_in": plain_every,
        "command_ms_from_schedule": pct(acks),
        "ack_to_visible_ms": pct(lags),
        "query_rtt_ms": pct(plain),
        "errors": errors,
    }


def _lag_run(
    work: Path,
    rate: float,
    duration_s: float,
    *,
    sample: int,
    plain_every: int,
    env: dict[str, str],
    profile_out: Path | None,
) -> dict[str, Any]:
    from bench import profile
    from bench.procs import http_get, metric_total

    svc = ServiceProcess(work, example_manifest_path("bank"), env=env)
    svc.start()
    try:
        _, before = http_get(svc.url("/metrics"))
        spy = None
        if profile_out is not None:
            spy = profile.record(svc.pid, duration_s, profile_out, blocking=False)
        out = asyncio.run(
            _lag_client(
                "127.0.0.1",
                svc.grpc_port,
                rate,
                duration_s,
                sample=sample,
                plain_every=plain_every,
            )
        )
        _, after = http_get(svc.url("/metrics"))
        out["service_visible_lag_ms"] = {
            **bucket_quantiles(
                histogram_buckets(before, LAG_HISTOGRAM), histogram_buckets(after, LAG_HISTOGRAM)
            ),
            "from": f"{LAG_HISTOGRAM} buckets (estimated within a bucket)",
        }
        write = "aggregate_index_write_seconds"
        out["index_write_ms"] = bucket_quantiles(
            histogram_buckets(before, write), histogram_buckets(after, write)
        )
        size = "aggregate_index_batch_changes"
        batches = metric_total(after, size + "_count") - metric_total(before, size + "_count")
        changes = metric_total(after, size + "_sum") - metric_total(before, size + "_sum")
        out["index_batches"] = {
            "batches": int(batches),
            "mean_changes": round(changes / batches, 1) if batches else 0,
        }
        if spy is not None and profile_out is not None:
            _, err = spy.communicate(timeout=120)
            if not profile_out.exists():
                out["profile"] = {"error": err.decode(errors="replace")[-500:]}
            else:
                summary = profile.summarise(profile_out.read_text())
                out["profile"] = {"file": str(profile_out), **summary}
                print(profile.format_summary(summary, top=20), file=sys.stderr)
        return out
    finally:
        svc.stop()


def _tree_at(ref: str, into: Path) -> Path:
    """The package as of git ``ref``, unpacked under ``into`` (for ``PYTHONPATH``)."""
    import subprocess

    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", ref, "aggregate"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def lag(
    work: Path,
    rate: float,
    duration_s: float,
    *,
    sample: int = 10,
    plain_every: int = 50,
    rounds: int = 1,
    ref: str | None = None,
    profile_out: Path | None = None,
) -> dict[str, Any]:
    """``rounds`` runs of this tree's service; with ``ref``, each round also runs the
    service as of that revision (its ``aggregate`` package first on ``PYTHONPATH``), the
    order alternating, and the medians and per-round ratios of the p99s are reported."""
    trees: dict[str, dict[str, str]] = {"this": {}}
    if ref is not None:
        trees[ref] = {"PYTHONPATH": str(_tree_at(ref, work / "ref-tree"))}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for r in range(rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            runs[name].append(
                _lag_run(
                    work / f"lag-{name.replace('/', '_')}-{r}",
                    rate,
                    duration_s,
                    sample=sample,
                    plain_every=plain_every,
                    env=trees[name],
                    profile_out=profile_out if name == "this" and r == 0 else None,
                )
            )
    if ref is None and rounds == 1:
        return runs["this"][0]

    def median(name: str, *path: str) -> float:
        values = []
        for run in runs[name]:
            value: Any = run
            for key in path:
                value = value.get(key, {}) if isinstance(value, dict) else {}
            if isinstance(value, int | float):
                values.append(float(value))
        return round(statistics.median(values), 2) if values else float("nan")

    figures = {
        "client_ack_to_visible_p99_ms": ("ack_to_visible_ms", "p99"),
        "client_ack_to_visible_p50_ms": ("ack_to_visible_ms", "p50"),
        "service_visible_lag_p99_ms": ("service_visible_lag_ms", "p99"),
        "service_visible_lag_p50_ms": ("service_visible_lag_ms", "p50"),
        "command_p99_ms": ("command_ms_from_schedule", "p99"),
        "index_write_p99_ms": ("index_write_ms", "p99"),
    }
    summary = {
        name: {label: median(name, *path) for label, path in figures.items()} for name in trees
    }
    out: dict[str, Any] = {"rounds": runs, "medians": summary}
    if ref is not None:
        ratios = {}
        for label, path in figures.items():
            per_round = []
            for mine, theirs in zip(runs["this"], runs[ref], strict=True):
                a, b = mine, theirs
                for key in path:
                    a, b = a.get(key, {}), b.get(key, {})
                if isinstance(a, int | float) and isinstance(b, int | float) and b:
                    per_round.append(a / b)
            if per_round:
                ratios[label] = round(statistics.median(per_round), 3)
        out["ratio_this_over_ref"] = ratios
    return out


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
    parser.add_argument(
        "--lag-sample",
        type=int,
        default=10,
        metavar="N",
        help="lag: check ack -> visible on 1 command in N (1: every command, the overload mode)",
    )
    parser.add_argument(
        "--lag-plain-every",
        type=int,
        default=50,
        metavar="M",
        help="lag: a plain query after 1 command in M (0: none; 5 with --lag-sample 1: the "
        "old doubled load)",
    )
    parser.add_argument("--lag-rate", type=float, default=500.0, help="lag: commands/s offered")
    parser.add_argument(
        "--lag-seconds", type=float, default=None, help="lag: length of the run (default 20)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="lag: py-spy the service during the first run"
    )
    parser.add_argument(
        "--lag-ref",
        metavar="REF",
        help="lag: also run the service as of git REF in every round, interleaved; ratios",
    )
    args = parser.parse_args()
    q = args.quick
    chosen = args.only or ["throughput", "lag", "query", "rebuild"]
    results: dict[str, Any] = {"quick": q}
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="index-bench-") as tmp:
        work = Path(tmp)
        if "throughput" in chosen:
            results["throughput"] = throughput(work, 1 if q else args.rounds, 1.5 if q else 8.0)
        if "lag" in chosen:
            seconds = args.lag_seconds or (2.0 if q else 20.0)
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
            results["lag"] = lag(
                work,
                args.lag_rate,
                seconds,
                sample=max(1, args.lag_sample),
                plain_every=max(0, args.lag_plain_every),
                rounds=1 if q else args.rounds,
                ref=args.lag_ref,
                profile_out=RESULTS / f"index-{stamp}-profile-lag.txt" if args.profile else None,
            )
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
