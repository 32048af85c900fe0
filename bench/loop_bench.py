"""The command path on uvloop against the standard event loop, same run: ~2 min.

Starts two inline services (the bank example), one with ``AGGREGATE_EVENT_LOOP=asyncio``
and one with ``uvloop``, both running the whole time, and alternates their measurement
windows (A B B A per round, unary with 32 clients, then ``SubmitCommands`` streams). It
prints, per workload, the medians of commands/s and of the service process's CPU per
command, and the median of the per-round ratios uvloop / asyncio::

    .venv/bin/python bench/loop_bench.py [--rounds 3] [--seconds 4]
        [--setting NAME --values A B]

``--setting``/``--values`` compare any other setting the same way, e.g. the quota pacing's
cost on the command path: ``--setting AGGREGATE_QUOTA_PACE_REFUSALS_PER_SECOND --values 0
100`` (ratios are B / A).

The rates are of a 2-core machine shared by both services and the load generator: read
the CPU per command and the ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procs import ServiceProcess
from bench.run import write_manifests
from bench.workloads import Plan, open_accounts, service_stream, service_unary, warm

LOOPS = ("asyncio", "uvloop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="each measured window")
    parser.add_argument("--setting", default="AGGREGATE_EVENT_LOOP", help="the variable")
    parser.add_argument("--values", nargs=2, default=list(LOOPS), metavar=("A", "B"))
    args = parser.parse_args(argv)
    variants = tuple(args.values)
    first, second = variants
    plan = replace(Plan(), window_s=args.seconds, histories=(), open_loop_accounts=0, per_history=0)
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="loop-bench-") as tmp:
        workdir = Path(tmp)
        manifests = write_manifests(workdir)
        services = {
            loop: ServiceProcess(workdir / f"v{i}", manifests["inline"], env={args.setting: loop})
            for i, loop in enumerate(variants)
        }
        try:
            accounts = {}
            for loop, svc in services.items():
                svc.start()
                accounts[loop] = open_accounts(svc, plan, with_histories=False)
                warm(svc, accounts[loop])
            for number in range(args.rounds):
                for workload in ("unary32", "stream"):
                    order = variants if number % 2 == 0 else variants[::-1]
                    for loop in (*order, *order[::-1]):
                        svc, acc = services[loop], accounts[loop]
                        if workload == "unary32":
                            result = service_unary(
                                svc, plan, acc.unary, plan.clients, plan.window_s
                            )
                        else:
                            result = service_stream(svc, plan, acc.stream)
                        rows.setdefault((workload, loop), []).append(result)
                        cpu = result["cpu_us_per_cmd"]["service"]
                        print(
                            f"round {number + 1} {workload:8} {loop:8} {result['rate']:7.0f}/s "
                            f"{cpu:7.1f} us/cmd",
                            flush=True,
                        )
        finally:
            for svc in services.values():
                svc.stop()
    print(f"\n{args.setting}: medians of {args.rounds} rounds (2 windows per value per round):")
    for workload in ("unary32", "stream"):
        for metric in ("rate", "cpu"):
            values = {
                loop: [
                    r["rate"] if metric == "rate" else r["cpu_us_per_cmd"]["service"]
                    for r in rows[(workload, loop)]
                ]
                for loop in variants
            }
            ratios = [b / a for a, b in zip(values[first], values[second], strict=True)]
            print(
                f"  {workload:8} {'cmd/s' if metric == 'rate' else 'us/cmd':6} {first} "
                f"{statistics.median(values[first]):8.1f}  {second} "
                f"{statistics.median(values[second]):8.1f}  {second}/{first} "
                f"{statistics.median(ratios):.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
