"""Scale-out on the many-shards topology: one shard vs two, same run.

    .venv/bin/python bench/scaleout.py [--rounds N] [--window S] [--nats cluster|single]

Two ``aggregate serve`` processes, ``shard-a`` and ``shard-b``, over one NATS (by default a
3-node JetStream cluster with an R3 stream, the topology of compose.yml; ``--nats single``
for one node), with the shard directory on: each shard owns the tenants the ring gives it.
Each shard is driven with a tenant it owns (``tenant_a`` on shard-a, ``tenant_b`` on
shard-b), by its own load generator. Per round, in this order: (a) the bare-gRPC baseline,
unary 32 clients; one shard unary 32 clients; two shards 16 + 16 clients at once; one shard
2 ``SubmitCommands`` streams; two shards 1 stream each at once. Reported: commands/s, the
ratios two/one and one/(a) (same-run ratios, so a busy machine moves both sides), and the
service CPU per command (microseconds, user + system of the shard processes). Writes
``bench/results/<timestamp>-scaleout.json``. ``bench/run.py`` is the benchmark of one
node; this measures what a second shard buys on the same machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregate.adapters.nats_server import NatsCluster, NatsServerProcess
from aggregate.domain.placement import HashRing
from bench.procs import ROOT, ServiceProcess
from bench.run import machine, say, write_manifests
from bench.workloads import (
    BareGrpcServer,
    Plan,
    open_accounts,
    service_event_loop,
    service_stream,
    service_unary,
    warm,
)

if TYPE_CHECKING:
    from collections.abc import Callable

RESULTS = ROOT / "bench" / "results"


def together(*steps: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the measurements at the same time (each starts its own load generator)."""
    results: list[dict[str, Any] | None] = [None] * len(steps)
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = steps[index]()
        except BaseException as exc:  # reported below, in the caller's thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(steps))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return [r for r in results if r is not None]


def combined(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Two simultaneous measurements as one: rates add up, errors merge."""
    errors: dict[str, int] = {}
    for part in parts:
        for name, count in part["errors"].items():
            errors[name] = errors.get(name, 0) + count
    return {
        "rate": round(sum(p["rate"] for p in parts), 1),
        "errors": errors,
        "service_cpu_us_per_cmd": [p["cpu_us_per_cmd"]["service"] for p in parts],
        "p99_ms": [p["latency_ms"].get("p99") for p in parts],
    }


SHARDS = ("shard-a", "shard-b")


def owned_tenant(shard: str) -> str:
    """The first tenant ``tenant-N`` that the ring over both shards gives ``shard``."""
    ring = HashRing(SHARDS)
    return next(f"tenant-{n}" for n in range(1000) if ring.owner(f"tenant-{n}") == shard)


def one_round(
    base_a: BareGrpcServer,
    shards: list[ServiceProcess],
    tenants: list[str],
    accounts: list[Any],
    plan: Plan,
) -> dict[str, Any]:
    half = dataclasses.replace(plan, streams=1)
    clients = plan.clients
    (first, second), (ta, tb), (aa, ab) = shards, tenants, accounts
    rnd: dict[str, Any] = {}
    rnd["baseline_a.unary32"] = base_a.unary(plan)["rate"]
    one = service_unary(first, plan, aa.unary, clients, plan.window_s, ta)
    rnd["one.unary32"] = one["rate"]
    rnd["one.unary32.cpu_us_per_cmd"] = one["cpu_us_per_cmd"]["service"]
    rnd["two.unary16x2"] = combined(
        together(
            lambda: service_unary(
                first, plan, aa.unary[: clients // 2], clients // 2, plan.window_s, ta
            ),
            lambda: service_unary(
                second, plan, ab.unary[: clients // 2], clients // 2, plan.window_s, tb
            ),
        )
    )
    rnd["one.stream2"] = service_stream(first, plan, aa.stream, ta)["rate"]
    rnd["two.stream1x2"] = combined(
        together(
            lambda: service_stream(first, half, aa.stream, ta),
            lambda: service_stream(second, half, ab.stream, tb),
        )
    )
    return rnd


def summary(rounds: list[dict[str, Any]]) -> dict[str, float]:
    def med(values: list[float]) -> float:
        return round(statistics.median(values), 2)

    return {
        "baseline_a.unary32": med([r["baseline_a.unary32"] for r in rounds]),
        "one.unary32": med([r["one.unary32"] for r in rounds]),
        "two.unary16x2": med([r["two.unary16x2"]["rate"] for r in rounds]),
        "one.unary32 / a": med([r["one.unary32"] / r["baseline_a.unary32"] for r in rounds]),
        "two.unary16x2 / a": med(
            [r["two.unary16x2"]["rate"] / r["baseline_a.unary32"] for r in rounds]
        ),
        "one.unary32 service CPU us/cmd": med([r["one.unary32.cpu_us_per_cmd"] for r in rounds]),
        "two.unary16x2 service CPU us/cmd": med(
            [statistics.mean(r["two.unary16x2"]["service_cpu_us_per_cmd"]) for r in rounds]
        ),
        "two / one, unary": med([r["two.unary16x2"]["rate"] / r["one.unary32"] for r in rounds]),
        "one.stream2": med([r["one.stream2"] for r in rounds]),
        "two.stream1x2": med([r["two.stream1x2"]["rate"] for r in rounds]),
        "two / one, streaming": med(
            [r["two.stream1x2"]["rate"] / r["one.stream2"] for r in rounds]
        ),
    }


def wait_for_both(services: list[ServiceProcess], timeout: float = 60.0) -> None:
    """Until every shard's directory lists both (before that, a shard places every tenant
    on itself alone)."""
    deadline = time.monotonic() + timeout
    for svc in services:
        while True:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{svc.http_port}/admin/shards", timeout=5
            ) as answer:
                live = {entry["shard_id"] for entry in json.loads(answer.read())}
            if live == set(SHARDS):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"shards never saw each other: {sorted(live)}")
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--window", type=float, default=6.0, help="measured seconds per workload (default 6)"
    )
    parser.add_argument(
        "--nats",
        choices=("cluster", "single"),
        default="cluster",
        help="a 3-node JetStream cluster with an R3 stream (default) or one node",
    )
    args = parser.parse_args(argv)
    plan = dataclasses.replace(Plan(), histories=(), window_s=max(1.0, args.window))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="aggregate-scaleout-"))
    manifests = write_manifests(workdir)
    cluster = NatsCluster(base_dir=workdir / "nats", size=3) if args.nats == "cluster" else None
    single = NatsServerProcess(store_dir=workdir / "nats", name="one") if cluster is None else None
    base_a = BareGrpcServer(workdir, event_loop=service_event_loop({}))
    services: list[ServiceProcess] = []
    rounds: list[dict[str, Any]] = []
    try:
        if cluster is not None:
            cluster.start()
            urls, replicas = ",".join(cluster.urls), "3"
        else:
            assert single is not None
            single.start()
            urls, replicas = single.url, "1"
        base_a.start()
        for shard in SHARDS:
            env = {
                "AGGREGATE_NATS_URL": urls,
                "AGGREGATE_STREAM_REPLICAS": replicas,
                "AGGREGATE_SHARD_ID": shard,
            }
            services.append(ServiceProcess(workdir / shard, manifests["inline"], env=env))
        for svc in services:
            svc.start()
        wait_for_both(services)
        tenants = [owned_tenant(shard) for shard in SHARDS]
        accounts = []
        for svc, tenant in zip(services, tenants, strict=True):
            opened = open_accounts(svc, plan, with_histories=False, tenant=tenant)
            warm(svc, opened, tenant)
            accounts.append(opened)
        for number in range(1, max(1, args.rounds) + 1):
            say(f"round {number}/{args.rounds}")
            rounds.append(one_round(base_a, services, tenants, accounts, plan))
            say(f"  {json.dumps(rounds[-1])}")
    finally:
        for svc in services:
            svc.stop()
        base_a.stop()
        if cluster is not None:
            cluster.stop()
        if single is not None:
            single.stop()
    result = {
        "started": stamp,
        "machine": machine(),
        "plan": dataclasses.asdict(plan),
        "rounds": rounds,
        "summary": summary(rounds),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{stamp}-scaleout.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"| measurement (median of {len(rounds)} rounds) | value |\n|---|---|")
    for name, value in result["summary"].items():
        print(f"| {name} | {value} |")
    print(f"\nresults: {path.relative_to(ROOT)}; {result['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
