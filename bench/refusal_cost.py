"""What one refused command costs the service: CPU seconds per quota refusal.

    .venv/bin/python bench/refusal_cost.py [--rate N] [--quota N] [--duration S]
                                           [--pace N] [--client grpclib|grpcio]
                                           [--profile OUT.txt]

Starts the real service (``aggregate serve``, embedded nats-server, the bank example inline)
with a per-tenant quota of ``--quota`` commands per second, and has one tenant offer
``--rate`` commands/s on an open loop (``bench/loadgen.py``, its own process), nothing else.
Over the measured window it reads the service process's CPU time and the
``aggregate_quota_rejections_total`` counter, and prints the CPU per refusal (the admitted
commands' share is estimated from the steady cost of an admitted command measured first,
at the quota's rate alone, and taken out). ``--pace`` sets the service's
``AGGREGATE_QUOTA_PACE_REFUSALS_PER_SECOND`` (default 0 here: every offered call is read and
refused, the cost of a refusal itself); ``--client grpcio`` floods through grpcio instead of
grpclib. ``--profile`` also records a py-spy profile of the service during the flood window
(collapsed stacks, summarised by ``bench/profile.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.noisy_neighbour import manifest, open_accounts, say
from bench.procs import CLK_TCK, ServiceProcess, run_client
from bench.profile import format_summary, record, summarise

REJECTIONS = "aggregate_quota_rejections_total"
TENANT = "flooder"


def threads(pid: int) -> dict[str, tuple[float, float]]:
    """User and system CPU seconds of each thread of ``pid``, by thread name and id."""
    out: dict[str, tuple[float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            text = (task / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        out[f"{comm}/{task.name}"] = (int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)
    return out


def window(
    svc: ServiceProcess,
    accounts: list[str],
    rate: float,
    duration: float,
    profile: Path | None,
    client: str = "grpclib",
) -> dict[str, Any]:
    """An open loop at ``rate``; the service's CPU seconds and refusals over its window."""
    marks: dict[str, Any] = {}
    spy: list[Any] = []

    def on_start() -> None:
        marks["cpu0"] = svc.cpu()["service"]
        marks["threads0"] = threads(svc.pid)
        marks["rej0"] = svc.metric(REJECTIONS)
        if profile is not None:
            spy.append(record(svc.pid, duration - 1, profile))

    def on_end() -> None:
        marks["cpu1"] = svc.cpu()["service"]
        marks["threads1"] = threads(svc.pid)
        marks["rej1"] = svc.metric(REJECTIONS)

    spec = {
        "host": "127.0.0.1",
        "port": svc.grpc_port,
        "tenant": TENANT,
        "kind": "open_loop",
        "rate": rate,
        "accounts": accounts,
        "warmup_s": 1.0,
        "duration_s": duration,
        "timeout_s": duration + 60,
        "client": client,
    }
    result = run_client(
        "bench.loadgen", spec, on_start=on_start, on_end=on_end, timeout=duration + 120
    )
    for proc in spy:
        proc.wait(timeout=60)
    elapsed = result["elapsed_s"]
    busy = {}
    for name, (user, system) in marks["threads1"].items():
        user0, system0 = marks["threads0"].get(name, (0.0, 0.0))
        if user - user0 + system - system0 >= 0.05:
            busy[name] = {"user_s": round(user - user0, 2), "sys_s": round(system - system0, 2)}
    return {
        "offered_per_s": rate,
        "admitted_per_s": result["rate"],
        "refused": marks["rej1"] - marks["rej0"],
        "service_cpu_s": round(marks["cpu1"] - marks["cpu0"], 3),
        "elapsed_s": elapsed,
        "errors": result["errors"],
        "threads": busy,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="offered commands/s")
    parser.add_argument("--quota", type=int, default=200, help="commands/s of the tenant")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per window")
    parser.add_argument("--profile", type=Path, help="write py-spy collapsed stacks here")
    parser.add_argument("--pace", type=int, default=0, help="the service's refusal pace")
    parser.add_argument("--client", choices=("grpclib", "grpcio"), default="grpclib")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="refusal-cost-"))
    svc = ServiceProcess(
        workdir / "storage",
        manifest(workdir),
        env={
            "AGGREGATE_QUOTA_COMMANDS_PER_SECOND": str(args.quota),
            "AGGREGATE_QUOTA_PACE_REFUSALS_PER_SECOND": str(args.pace),
        },
    )
    svc.start()
    try:
        accounts = open_accounts(svc, TENANT, max(1, min(32, args.quota // 2)))
        admitted = window(svc, accounts, args.quota * 0.9, args.duration, None, args.client)
        say(f"admitted only: {admitted}")
        flood = window(svc, accounts, args.rate, args.duration, args.profile, args.client)
        say(f"flood: {flood}")
    finally:
        svc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    per_admitted = admitted["service_cpu_s"] / max(
        1.0, admitted["admitted_per_s"] * admitted["elapsed_s"]
    )
    admitted_cpu = per_admitted * flood["admitted_per_s"] * flood["elapsed_s"]
    refusal_us = (flood["service_cpu_s"] - admitted_cpu) / max(1.0, flood["refused"]) * 1e6
    summary = {
        "cpu_per_admitted_us": round(per_admitted * 1e6, 1),
        "cpu_per_refusal_us": round(refusal_us, 1),
        "service_cpu_share_of_flood_window": round(flood["service_cpu_s"] / flood["elapsed_s"], 2),
        "admitted": admitted,
        "flood": flood,
    }
    print(json.dumps(summary, indent=2))
    if args.profile is not None and args.profile.exists():
        print(format_summary(summarise(args.profile.read_text()), top=25))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
