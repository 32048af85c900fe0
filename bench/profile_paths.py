"""py-spy of the service's command path alone, without the baselines: ~1 min.

For each isolation (``inline``, ``process``) it starts ``aggregate serve`` with the bank
example, opens the accounts, then records the service process (``--gil``, blocking, as
``bench/run.py --profile``) while the unary (32 clients) and the ``SubmitCommands``
streaming workloads run, and prints the top self-time functions and components of each::

    .venv/bin/python bench/profile_paths.py [--seconds 10] [--only inline|process]

With ``process`` isolation it also records one program worker (``workers`` lines): the
other side of the round trip. The rates printed are under the profiler (slower): compare
profiles with each other, not with ``bench/run.py``'s table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import profile
from bench.procs import ServiceProcess, child_pids, process_name
from bench.run import write_manifests
from bench.workloads import Plan, open_accounts, service_stream, service_unary, warm


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--only", choices=("inline", "process"), action="append")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path, help="keep the collapsed stacks in this directory")
    args = parser.parse_args(argv)
    plan = replace(Plan(), window_s=args.seconds, histories=(), open_loop_accounts=0, per_history=0)
    with tempfile.TemporaryDirectory(prefix="profile-paths-") as tmp:
        workdir = Path(tmp)
        keep = args.out or workdir
        keep.mkdir(parents=True, exist_ok=True)
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
