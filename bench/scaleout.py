"""What a second interpreter would buy: two service processes on one nats-server.

    .venv/bin/python bench/scaleout.py [--rounds N] [--window S]

The service runs its whole command path on one asyncio island thread (DESIGN §3), so one
process is bound by one interpreter. This experiment measures the ceiling of running two:
two ``aggregate serve`` processes with ``AGGREGATE_NATS_URL`` pointing at one shared
nats-server (same stream, separate snapshot databases), each driven by its own load
generator at the same time on distinct accounts, against one process driven alone, with
baseline (a) in the same round. Both processes serve every tenant (no placement map); were
a command for one aggregate sent to both, the conditional append would keep them correct.

Per round, in this order: (a) unary 32 clients; one service unary 32 clients; two services
16 + 16 clients at once; one service 2 ``SubmitCommands`` streams; two services 1 stream
each at once. Prints the medians and writes ``bench/results/<timestamp>-scaleout.json``.
This is an experiment on the deployment, not a mode of the service: ``bench/run.py`` is
the benchmark.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregate.adapters.nats_server import NatsServerProcess
from bench.procs import ROOT, ServiceProcess
from bench.run import machine, say, write_manifests
from bench.workloads import (
    BareGrpcServer,
    Plan,
    open_accounts,
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


def one_round(
    base_a: BareGrpcServer,
    first: ServiceProcess,
    second: ServiceProcess,
    unary: list[str],
    stream: list[str],
    plan: Plan,
) -> dict[str, Any]:
    half = dataclasses.replace(plan, streams=1)
    clients = plan.clients
    rnd: dict[str, Any] = {}
    rnd["baseline_a.unary32"] = base_a.unary(plan)["rate"]
    rnd["one.unary32"] = service_unary(first, plan, unary, clients, plan.window_s)["rate"]
    rnd["two.unary16x2"] = combined(
        together(
            lambda: service_unary(first, plan, unary[: clients // 2], clients // 2, plan.window_s),
            lambda: service_unary(second, plan, unary[clients // 2 :], clients // 2, plan.window_s),
        )
    )
    rnd["one.stream2"] = service_stream(first, plan, stream)["rate"]
    middle = len(stream) // 2
    rnd["two.stream1x2"] = combined(
        together(
            lambda: service_stream(first, half, stream[:middle]),
            lambda: service_stream(second, half, stream[middle:]),
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
        "one.stream2": med([r["one.stream2"] for r in rounds]),
        "two.stream1x2": med([r["two.stream1x2"]["rate"] for r in rounds]),
        "two / one, streaming": med(
            [r["two.stream1x2"]["rate"] / r["one.stream2"] for r in rounds]
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--window", type=float, default=6.0, help="measured seconds per workload (default 6)"
    )
    args = parser.parse_args(argv)
    plan = dataclasses.replace(Plan(), histories=(), window_s=max(1.0, args.window))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="aggregate-scaleout-"))
    manifests = write_manifests(workdir)
    nats = NatsServerProcess(store_dir=workdir / "shared-nats", name="shared")
    base_a = BareGrpcServer(workdir)
    env = {"AGGREGATE_NATS_URL": ""}
    services: list[ServiceProcess] = []
    rounds: list[dict[str, Any]] = []
    try:
        nats.start()
        env["AGGREGATE_NATS_URL"] = nats.url
        base_a.start()
        services = [
            ServiceProcess(workdir / name, manifests["inline"], env=env) for name in ("one", "two")
        ]
        for svc in services:
            svc.start()
        first, second = services
        accounts = open_accounts(first, plan, with_histories=False)
        warm(first, accounts)
        warm(second, accounts)
        for number in range(1, max(1, args.rounds) + 1):
            say(f"round {number}/{args.rounds}")
            rounds.append(one_round(base_a, first, second, accounts.unary, accounts.stream, plan))
            say(f"  {json.dumps(rounds[-1])}")
    finally:
        for svc in services:
            svc.stop()
        base_a.stop()
        nats.stop()
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
