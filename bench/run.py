"""Benchmark the command path against its ceilings: one command, results in JSON and a table.

    .venv/bin/python bench/run.py [--quick] [--rounds N] [--profile] [--keep]
                                  [--service-env NAME=VALUE ...]

Starts the real service (``aggregate serve``, embedded nats-server) as a subprocess on
loopback and drives it with the load generator (``bench/loadgen.py``, a separate process).
Baselines run in the same run, interleaved with the service in every round (the machine is
noisy): (a) a bare grpclib server doing one conditional JetStream publish per
``SubmitCommand``, (b) raw nats-py conditional publishes, each on its own nats-server from
the same binary. Per round: cold reads after the restart, (a), service unary 32 clients,
(b), service streaming, then the service's other workloads; process isolation after.
Then, once: the memory series (the watch buffer filled first, then the cache filling, then
full), and with ``--profile`` a py-spy profile of the service under the unary and streaming
workloads.

The baselines run on the event loop the service's command path runs on (the standard one by
default, ``--service-env AGGREGATE_EVENT_LOOP=uvloop`` for uvloop): they are the ceilings
of the same stack, so the ratios measure only the service's own overhead.

Writes ``bench/results/<timestamp>.json`` (raw per-round results + the summary), prints the
table with ratios and the targets (judged on the inline configuration: trusted programs),
and draws ``docs/latency_vs_load.png`` (``--quick`` writes the plot next to the JSON
instead). ``--quick`` is a smoke run (one short round) that finishes in under a minute.
Everything runs in a temporary directory, removed at the end unless ``--keep`` (or the run
failed: then the service logs are kept there). The service gets none of the caller's
``AGGREGATE_*`` variables: defaults, ``AGGREGATE_LOG_LEVEL=warning``, the manifest, and
whatever ``--service-env`` adds (e.g. ``AGGREGATE_SNAPSHOT_THRESHOLD=100``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregate.adapters.nats_server import find_nats_server
from aggregate.config import example_manifest_path
from bench import profile, report
from bench.procs import ROOT, ServiceProcess
from bench.workloads import (
    QUICK,
    Accounts,
    BareGrpcServer,
    Plan,
    RawPublisher,
    cold_reads,
    cold_reads_without_snapshots,
    memory_series,
    open_accounts,
    service_event_loop,
    service_open_loop,
    service_stream,
    service_unary,
    warm,
)

if TYPE_CHECKING:
    from collections.abc import Callable

RESULTS = ROOT / "bench" / "results"
PLOT = ROOT / "docs" / "latency_vs_load.png"
CEILING_RATE = 500
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    nats_version = subprocess.run(
        [find_nats_server(), "--version"], capture_output=True, text=True, timeout=10
    ).stdout.strip()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "aggregate"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.splitlines()
    return {
        "commit": head + (f" + {len(dirty)} changed files in aggregate/" if dirty else ""),
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nats_server": nats_version,
    }


def write_manifests(workdir: Path) -> dict[str, Path]:
    """The bank example's programs under two manifests: ``inline`` and ``process``."""
    programs = example_manifest_path("bank").parent
    paths = {}
    for isolation in ("inline", "process"):
        path = workdir / f"{isolation}.yaml"
        path.write_text(
            "aggregate_types:\n"
            "  bank-account:\n"
            "    language: starlark\n"
            f"    isolation: {isolation}\n"
            f"    decide: {programs / 'decide.star'}\n"
            f"    apply: {programs / 'apply.star'}\n"
            "    initial_state: {}\n"
        )
        paths[isolation] = path
    return paths


Step = tuple[str, "Callable[[], dict[str, Any]]"]


def _run_steps(steps: list[Step], rnd: dict[str, Any]) -> None:
    for key, step in steps:
        rnd[key] = result = step()
        latency = result["latency_ms"]
        say(
            f"  {key}: {result['rate']:.0f}/s p50 {latency.get('p50')} ms "
            f"p99 {latency.get('p99')} ms errors {result['errors']}"
        )


def service_round(
    svc: ServiceProcess,
    acc: Accounts,
    plan: Plan,
    rnd: dict[str, Any],
    base_a: BareGrpcServer,
    raw_b: RawPublisher,
    cold: list[Any],
) -> None:
    """One round on the inline service, with the baselines interleaved."""
    cold.append(cold_reads(svc, acc.histories, acc.unary[:1]))
    say(f"  cold reads (snapshots): {[(r['label'], r['ms']) for r in cold[-1]]}")
    warm(svc, acc)
    steps: list[Step] = [
        ("baseline_a.unary32", partial(base_a.unary, plan)),
        (
            "inline.unary32",
            partial(service_unary, svc, plan, acc.unary, plan.clients, plan.window_s),
        ),
        ("baseline_b.raw64", partial(raw_b.run, plan)),
        ("inline.stream", partial(service_stream, svc, plan, acc.stream)),
        ("inline.unary1", partial(service_unary, svc, plan, acc.unary[:1], 1, plan.short_s)),
        ("inline.hot32", partial(service_unary, svc, plan, [acc.hot], plan.clients, plan.short_s)),
    ]
    for rate in plan.rates:
        if rate == CEILING_RATE:  # (a) on the same schedule: the latency ceiling there
            steps.append((f"baseline_a.open_loop.{rate}", partial(base_a.open_loop, plan, rate)))
        steps.append(
            (f"inline.open_loop.{rate}", partial(service_open_loop, svc, plan, acc.open_loop, rate))
        )
    _run_steps(steps, rnd)


def process_round(svc: ServiceProcess, acc: Accounts, plan: Plan, rnd: dict[str, Any]) -> None:
    """The process-isolation configuration: same workloads, worker processes for programs."""
    warm(svc, acc)
    steps: list[Step] = [
        (
            "process.unary32",
            partial(service_unary, svc, plan, acc.unary, plan.clients, plan.window_s),
        ),
        ("process.stream", partial(service_stream, svc, plan, acc.stream)),
    ]
    steps += [
        (f"process.open_loop.{rate}", partial(service_open_loop, svc, plan, acc.open_loop, rate))
        for rate in (plan.rates if plan.process_open_loop else ())
    ]
    _run_steps(steps, rnd)


def profile_phase(svc: ServiceProcess, acc: Accounts, plan: Plan, stamp: str) -> dict[str, Any]:
    """py-spy on the service while the unary-32 and the streaming workloads run."""
    out: dict[str, Any] = {}
    svc.start()
    try:
        warm(svc, acc)
        steps: list[Step] = [
            ("unary32", partial(service_unary, svc, plan, acc.unary, plan.clients, plan.window_s)),
            ("stream", partial(service_stream, svc, plan, acc.stream)),
        ]
        for key, run in steps:
            raw = RESULTS / f"{stamp}-profile-{key}.txt"
            spy = profile.record(svc.pid, plan.warmup_s + plan.window_s, raw)
            result = run()
            _, err = spy.communicate(timeout=120)
            if not raw.exists():
                out[key] = {"error": err.decode(errors="replace")[-500:]}
                continue
            summary = profile.summarise(raw.read_text())
            out[key] = {
                "file": str(raw.relative_to(ROOT)),
                "rate_under_profiler": result["rate"],
                **summary,
            }
            say(f"profile {key} ({raw.name}):\n{profile.format_summary(summary, top=12)}")
    finally:
        svc.stop()
    return out


def run_all(
    plan: Plan,
    workdir: Path,
    results: dict[str, Any],
    *,
    do_profile: bool,
    stamp: str,
    env: dict[str, str],
) -> None:
    manifests = write_manifests(workdir)
    loop = service_event_loop(env)
    results["event_loop"] = loop
    base_a = BareGrpcServer(workdir, event_loop=loop)
    raw_b = RawPublisher(workdir, event_loop=loop)
    inline = ServiceProcess(workdir / "inline", manifests["inline"], env=env)
    process = ServiceProcess(workdir / "process", manifests["process"], env=env)
    memory = ServiceProcess(
        workdir / "memory",
        manifests["inline"],
        env={
            **env,
            "AGGREGATE_CACHE_SIZE": str(plan.memory_cache),
            "AGGREGATE_WATCH_BUFFER_CHANGES": str(plan.memory_watch_buffer),
        },
    )
    try:
        say("starting baselines (a) and (b)")
        base_a.start()
        raw_b.start()
        say("set-up: opening accounts, filling histories " + str(plan.histories))
        inline.start()
        try:
            acc = open_accounts(inline, plan, with_histories=True)
        finally:
            inline.stop()
        acc_process = Accounts()
        if plan.process_isolation:
            process.start()
            try:
                acc_process = open_accounts(process, plan, with_histories=False)
            finally:
                process.stop()
        for number in range(1, plan.rounds + 1):
            say(f"round {number}/{plan.rounds}")
            rnd: dict[str, Any] = {}
            results["rounds"].append(rnd)
            inline.start()
            try:
                service_round(inline, acc, plan, rnd, base_a, raw_b, results["cold"]["snapshot"])
            finally:
                inline.stop()
            if plan.no_snapshot_cold:
                reads = cold_reads_without_snapshots(inline, acc.histories, acc.unary[:1])
                results["cold"]["no_snapshot"].append(reads)
                say(f"  cold reads (no snapshots): {[(r['label'], r['ms']) for r in reads]}")
            if plan.process_isolation:
                process.start()
                try:
                    process_round(process, acc_process, plan, rnd)
                finally:
                    process.stop()
        say(f"memory: cache size {plan.memory_cache}, {plan.memory_total} new aggregates")
        memory.start()
        try:
            results["memory"] = memory_series(memory, plan)
        finally:
            memory.stop()
        if do_profile:
            results["profile"] = profile_phase(inline, acc, plan, stamp)
    finally:
        for svc in (inline, process, memory):
            svc.stop()
        base_a.stop()
        raw_b.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode, < 60 s")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--profile", action="store_true", help="py-spy the service at the end")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the service processes (repeatable), e.g. "
        "AGGREGATE_SNAPSHOT_THRESHOLD=100",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=max(1, args.rounds))
    env = {}
    for item in args.service_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--service-env {item!r} is not NAME=VALUE")
        env[name] = value
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started": stamp,
        "mode": "quick" if args.quick else "full",
        "plan": dataclasses.asdict(plan),
        "service_env": env,
        "machine": machine(),
        "rounds": [],
        "cold": {"snapshot": [], "no_snapshot": []},
        "memory": None,
        "profile": None,
    }
    workdir = Path(tempfile.mkdtemp(prefix="aggregate-bench-"))
    failed: BaseException | None = None
    try:
        run_all(plan, workdir, results, do_profile=args.profile, stamp=stamp, env=env)
    except (Exception, KeyboardInterrupt) as exc:
        failed = exc
        results["failed"] = repr(exc)
    finally:
        if args.keep or failed:
            say(f"kept {workdir} (service logs: *.log)")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - T0, 1)
    if results["rounds"]:
        results["summary"] = report.summarise(results)
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(results, indent=1))
    if "summary" in results:
        m = results["machine"]
        plot_path = path.with_suffix(".png") if args.quick else PLOT
        report.plot(
            results["summary"],
            plot_path,
            title=f"aggregate, bank example, {m['cores']} cores, {m['cpu'][:40]}, "
            f"median of {len(results['rounds'])} rounds",
        )
        print(report.table(results["summary"]))
        print(
            f"\nresults: {path.relative_to(ROOT)}; plot: {plot_path.relative_to(ROOT)}; "
            f"{results['elapsed_s']:.0f} s"
        )
    if failed is not None:
        raise failed
    return 0


if __name__ == "__main__":
    sys.exit(main())
