"""The process-isolation round trip, before and after, in one run: ~1-2 min.

Each measurement runs in a child process of its own, on one of two trees of the package:
``before`` (``git archive`` of ``--ref``, default ``main``, unpacked in a temporary
directory, so its workers run the old worker too) and ``after`` (this tree). The child
opens a ``WorkerPool`` (``--workers``, default 2: the service's default), then callers
(``--callers`` of them at once: 1 = a call at a time, more = commands queueing) send
the bank example's ``Deposit`` decide for ``--seconds`` each. It reports the calls per
second, and CPU per call of the calling process and of the workers. Rounds alternate
before/after; the medians and the median of the per-round ratios are printed::

    .venv/bin/python bench/worker_bench.py [--rounds 3] [--callers 1,16] [--seconds 3]

``--workers-vs N`` compares this tree with ``N`` workers (``before``) against this tree with
``--workers`` workers (``after``) instead: worker count against cores, same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(callers: int, seconds: float, workers: int) -> dict[str, Any]:
    import anyio

    from aggregate.config import example_manifest_path, load_manifest
    from aggregate.programs.base import ProgramLimits
    from aggregate.programs.pool import WorkerPool
    from aggregate.programs.starlark_program import StarlarkProcessProgram

    spec = load_manifest(example_manifest_path("bank")).types["bank-account"]
    state = {"owner": "bench", "balance": 10}
    command = {"type": "Deposit", "amount": 1}
    async with WorkerPool(ProgramLimits(pool_size=workers)) as pool:
        program = StarlarkProcessProgram("bank-account", spec.decide, spec.apply, pool)
        for _ in range(50):  # compile in every worker, warm up
            await program.decide(state, command)
        count = 0
        stop = 0.0

        async def caller() -> None:
            nonlocal count
            while time.monotonic() < stop:
                decision = await program.decide(state, command)
                assert decision.state["balance"] == 11  # type: ignore[union-attr]
                count += 1

        pids = pool.worker_pids
        cpu0 = time.process_time(), sum(_cpu(p) for p in pids)
        wall0 = time.monotonic()
        stop = wall0 + seconds
        async with anyio.create_task_group() as tg:
            for _ in range(callers):
                tg.start_soon(caller)
        wall = time.monotonic() - wall0
        own, work = time.process_time() - cpu0[0], sum(_cpu(p) for p in pids) - cpu0[1]
    return {
        "calls_per_s": count / wall,
        "caller_us": own / count * 1e6,
        "workers_us": work / count * 1e6,
    }


def _child(tree: Path, callers: int, seconds: float, workers: int) -> dict[str, Any]:
    code = (
        "import anyio, json, sys; sys.path.insert(0, sys.argv[1]); "
        "from bench.worker_bench import _measure; "
        "print(json.dumps(anyio.run(_measure, int(sys.argv[2]), float(sys.argv[3]), "
        "int(sys.argv[4]))))"
    )
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tree), str(callers), str(seconds), str(workers)],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120 + seconds,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callers", default="1,16")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ref", default="main", help="the git revision to compare with")
    parser.add_argument("--workers-vs", type=int, help="compare worker counts on this tree")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="worker-bench-") as tmp:
        old = Path(tmp)
        archive = subprocess.run(
            ["git", "archive", args.ref, "aggregate"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        (old / "bench").mkdir()
        (old / "bench" / "__init__.py").write_text("")
        (old / "bench" / "worker_bench.py").write_text(Path(__file__).read_text())
        trees = {"before": (old, args.workers), "after": (ROOT, args.workers)}
        if args.workers_vs is not None:
            trees["before"] = (ROOT, args.workers_vs)
        for callers in (int(c) for c in args.callers.split(",")):
            rows: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
            for _ in range(args.rounds):
                for name, (tree, workers) in trees.items():
                    rows[name].append(_child(tree, callers, args.seconds, workers))
            setup = " vs ".join(
                f"{name}: {t[0].name} with {t[1]} workers" for name, t in trees.items()
            )
            print(f"\n{callers} caller(s), {setup}; median of {args.rounds} rounds:")
            for metric in ("calls_per_s", "caller_us", "workers_us"):
                before = [r[metric] for r in rows["before"]]
                after = [r[metric] for r in rows["after"]]
                ratios = [a / b for a, b in zip(after, before, strict=True)]
                print(
                    f"  {metric:12} before {statistics.median(before):8.1f}  after "
                    f"{statistics.median(after):8.1f}  after/before {statistics.median(ratios):.2f}"
                    f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
