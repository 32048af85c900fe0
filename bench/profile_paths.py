"""py-spy of the service's command path alone, without the baselines: ~1 min.

For each isolation (``inline``, ``process``) it starts ``aggregate serve`` with the bank
example, opens the accounts, then records the service process (``--gil``, blocking, as
``bench/run.py --profile``) while the unary (32 clients) and the ``SubmitCommands``
streaming workloads run, and prints the top self-time functions and components of each::

    .venv/bin/python bench/profile_paths.py [--seconds 10] [--only inline|process]

With ``process`` isolation it also records one program worker (``workers`` lines): the
other side of the round trip. The rates printed are under the profiler (slower): compare
profiles with each other, not with ``bench/run.py``'s table.

``--against-a`` instead profiles baseline (a) (``bench/baselines.py``: a bare grpclib server
doing one conditional publish) and the inline service under the same unary load, in the same
run, and prints each component's CPU per command in both, in microseconds: the share of
samples times the CPU per command measured in unprofiled windows beside the profiled ones.
It tells which part of the gap to (a) is the libraries' and which the service's own work::

    .venv/bin/python bench/profile_paths.py --against-a [--seconds 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import profile
from bench.procs import ServiceProcess, child_pids, process_name
from bench.run import write_manifests
from bench.workloads import (
    BareGrpcServer,
    Plan,
    open_accounts,
    service_stream,
    service_unary,
    warm,
)


def _profiled(
    svc: ServiceProcess, plan: Plan, run: Any, raw: Path, worker: Path | None
) -> dict[str, Any]:
    spy = profile.record(svc.pid, plan.warmup_s + plan.window_s, raw)
    spies = [spy]
    if worker is not None:
        pids = [p for p in child_pids(svc.pid) if not process_name(p).startswith("nats-server")]
        if pids:
            spies.append(profile.record(pids[0], plan.warmup_s + plan.window_s, worker))
    result = run()
    for one in spies:
        one.communicate(timeout=120)
    out = {"rate": result["rate"], "service": profile.summarise(raw.read_text())}
    if worker is not None and worker.exists():
        out["worker"] = profile.summarise(worker.read_text())
    return out


def _components_us(summary: dict[str, Any], cpu_us: float) -> dict[str, float]:
    return {row["function"]: row["percent"] * cpu_us / 100 for row in summary["components"]}


def against_a(workdir: Path, keep: Path, plan: Plan, rounds: int) -> dict[str, Any]:
    """Baseline (a) and the inline service, unary 32: each component's µs per command."""
    manifests = write_manifests(workdir)
    base = BareGrpcServer(workdir)
    svc = ServiceProcess(workdir / "inline", manifests["inline"])
    base.start()
    try:
        svc.start()
        acc = open_accounts(svc, plan, with_histories=False)
        warm(svc, acc)
        runs: dict[str, tuple[Callable[[], dict[str, Any]], Callable[[], int], str]] = {
            "a": (partial(base.unary, plan), lambda: base.pid, "server"),
            "service": (
                partial(service_unary, svc, plan, acc.unary, plan.clients, plan.window_s),
                lambda: svc.pid,
                "service",
            ),
        }
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        rates: dict[str, list[float]] = {name: [] for name in runs}
        summaries: dict[str, dict[str, Any]] = {}
        for rnd in range(rounds):
            for name, (run, pid, part) in runs.items():
                plain = run()
                rates[name].append(plain["rate"])
                cpu[name].append(plain["cpu_us_per_cmd"][part])
                print(f"round {rnd + 1} {name}: {plain['rate']:.0f}/s, {cpu[name][-1]:.0f} µs")
                if rnd == 0:
                    raw = keep / f"against-a-{name}.txt"
                    spy = profile.record(pid(), plan.warmup_s + plan.window_s, raw)
                    run()
                    spy.communicate(timeout=120)
                    summaries[name] = profile.summarise(raw.read_text(), top=40)
    finally:
        svc.stop()
        base.stop()
    mean = {name: sum(v) / len(v) for name, v in cpu.items()}
    table = {name: _components_us(summaries[name], mean[name]) for name in runs}
    print(
        f"\nunary 32, CPU per command of the server process: (a) {mean['a']:.0f} µs at "
        f"{sum(rates['a']) / rounds:.0f}/s, service {mean['service']:.0f} µs at "
        f"{sum(rates['service']) / rounds:.0f}/s (means of {rounds} unprofiled windows each)"
    )
    print(f"{'component':<44} {'(a) µs':>8} {'service µs':>11}")
    names = sorted(
        set(table["a"]) | set(table["service"]), key=lambda n: -table["service"].get(n, 0)
    )
    for name in names:
        print(f"{name:<44} {table['a'].get(name, 0):8.1f} {table['service'].get(name, 0):11.1f}")
    return {"cpu_us": mean, "rates": rates, "components_us": table}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--only", choices=("inline", "process"), action="append")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path, help="keep the collapsed stacks in this directory")
    parser.add_argument(
        "--against-a", action="store_true", help="baseline (a) beside the inline service, unary"
    )
    parser.add_argument("--rounds", type=int, default=2, help="unprofiled windows (--against-a)")
    args = parser.parse_args(argv)
    plan = replace(Plan(), window_s=args.seconds, histories=(), open_loop_accounts=0, per_history=0)
    with tempfile.TemporaryDirectory(prefix="profile-paths-") as tmp:
        workdir = Path(tmp)
        keep = args.out or workdir
        keep.mkdir(parents=True, exist_ok=True)
        if args.against_a:
            against_a(workdir, keep, plan, max(1, args.rounds))
            return 0
        manifests = write_manifests(workdir)
        for isolation in args.only or ("inline", "process"):
            svc = ServiceProcess(workdir / isolation, manifests[isolation])
            svc.start()
            try:
                acc = open_accounts(svc, plan, with_histories=False)
                warm(svc, acc)
                steps = {
                    "unary32": partial(
                        service_unary, svc, plan, acc.unary, plan.clients, plan.window_s
                    ),
                    "stream": partial(service_stream, svc, plan, acc.stream),
                }
                for key, run in steps.items():
                    raw = keep / f"{isolation}-{key}.txt"
                    worker = keep / f"{isolation}-{key}-worker.txt"
                    out = _profiled(svc, plan, run, raw, worker if isolation == "process" else None)
                    print(f"== {isolation} {key}: {out['rate']:.0f}/s under the profiler")
                    print(profile.format_summary(out["service"], top=args.top))
                    if "worker" in out:
                        print(f"-- {isolation} {key}: one program worker")
                        print(profile.format_summary(out["worker"], top=args.top))
                    sys.stdout.flush()
            finally:
                svc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
