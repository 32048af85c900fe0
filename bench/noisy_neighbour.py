"""Noisy neighbour: does a tenant flooding past its quota move a steady tenant's latency?

    .venv/bin/python bench/noisy_neighbour.py [--quick] [--rounds N] [--quota N]
                                              [--steady-rate N] [--flood-factor N]
                                              [--flooder-max-pending N] [--flooder-nice N]
                                              [--pace N] [--flooder-kind unary|stream]
                                              [--gateway] [--client grpclib|grpcio]
                                              [--keep]

Starts the real service (``aggregate serve``, embedded nats-server, the bank example inline)
with a per-tenant quota of ``--quota`` commands per second (burst: one second's worth) and
drives it with the load generator (``bench/loadgen.py``), each client a separate process.
Per round, in the same run: the steady tenant alone, an open loop at ``--steady-rate``
commands/s (default 100); then the same steady loop while another tenant offers exactly its
quota (the control: load the quota permits, nothing refused); then the same steady loop
while that tenant offers ``--flood-factor`` (default 10) times its quota. Latency counts
from each command's scheduled send time (no coordinated omission).

The table compares the steady tenant's p50/p99 alone and beside the flooder (the target:
p99 beside within 1.5x of p99 alone), gives the ratio to the p99 beside the flooder at its
quota (what the flood's refused excess costs the steady tenant), and shows what the
flooder got (admitted rate, RESOURCE_EXHAUSTED count, sends it skipped). The flooder is a
client with a bounded pool of calls (``--flooder-max-pending``, default 800: its 8
connections' stream limits): a send due while that many are outstanding is skipped, as a
real client's would be; without the bound its own process would pile up tasks and take a
core of this machine once the server reads it more slowly (``--flooder-max-pending 0``).
Its admitted rate counts the successes that arrive inside the window, whenever they were
sent (the load generator's ``answered_rate``). ``--flooder-nice N``
runs the flooder's client process at that nice value: on two cores it competes with the
service for CPU (at 10x its quota it takes a third of a core, much of it HTTP/2 bookkeeping
of its 800 open calls), which a flooder on its own machine would not; the default, 0,
leaves that contention in the figures. ``--pace N`` sets
the service's ``AGGREGATE_QUOTA_PACE_REFUSALS_PER_SECOND`` (``--pace 0``: no pacing).
``--flooder-kind stream`` floods with ``SubmitCommands`` instead: two streams of 64
commands in flight each, sent as fast as they are answered (no schedule: more than any
factor of the quota), its admitted rate and refusals counted the same way; the control at
its quota stays the unary open loop.
``--gateway`` sends both tenants' calls from one client process over the same 8
connections, as an API gateway multiplexes its tenants: the service never slows the
reading of a connection that carries several tenants, so this measures what the flood's
refusals themselves cost the steady tenant (unary flood only).
``--client grpcio`` runs every window's load generator on grpcio instead of grpclib.
Each steady window also reads the cores the service process and its nats-server used over
it (the table's last column: what the node spent, apart from the clients on this machine).
The steady tenant must get no error at all. Writes
``bench/results/noisy-neighbour-<timestamp>.json``. ``--quick`` is a smoke run (one short
round at a tenth of the rates) that proves the harness works; figures worth quoting need
a quiet machine and the default budget. A steady window with no completed command (the
machine could not carry the load) shows as ``None`` and ``nan``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregate.config import example_manifest_path
from aggregate.domain.ids import uuid7
from bench.procs import ROOT, ServiceProcess, run_client

RESULTS = ROOT / "bench" / "results"
STEADY, FLOODER = "steady", "flooder"
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def manifest(workdir: Path) -> Path:
    programs = example_manifest_path("bank").parent
    path = workdir / "inline.yaml"
    path.write_text(
        "aggregate_types:\n"
        "  bank-account:\n"
        "    language: starlark\n"
        "    isolation: inline\n"
        f"    decide: {programs / 'decide.star'}\n"
        f"    apply: {programs / 'apply.star'}\n"
        "    initial_state: {}\n"
    )
    return path


def open_accounts(svc: ServiceProcess, tenant: str, count: int) -> list[str]:
    """``count`` opened accounts of ``tenant`` (one stream, well under any quota's burst).

    Raises:
        RuntimeError: an open failed.
    """
    ids = [str(uuid7()) for _ in range(count)]
    spec = {
        "host": "127.0.0.1",
        "port": svc.grpc_port,
        "tenant": tenant,
        "kind": "batch",
        "command": "open",
        "targets": [[i, 1] for i in ids],
        "streams": 1,
        "timeout_s": 60,
    }
    result = run_client("bench.loadgen", spec, timeout=90)
    if result["errors"] or result["count"] != count:
        raise RuntimeError(f"opening {tenant}'s accounts: {result}")
    return ids


def open_loop(
    svc: ServiceProcess,
    tenant: str,
    accounts: list[str],
    rate: float,
    warmup_s: float,
    s: float,
    max_pending: int = 0,
    nice: int = 0,
    client: str = "grpclib",
) -> dict[str, Any]:
    spec = {
        "host": "127.0.0.1",
        "port": svc.grpc_port,
        "tenant": tenant,
        "kind": "open_loop",
        "rate": rate,
        "accounts": accounts,
        "warmup_s": warmup_s,
        "duration_s": s,
        "timeout_s": warmup_s + s + 60,
        "max_pending": max_pending,
        "nice": nice,
        "client": client,
    }
    if tenant != STEADY:
        return run_client("bench.loadgen", spec, timeout=warmup_s + s + 120)
    return measured(svc, spec, timeout=warmup_s + s + 120)


def measured(svc: ServiceProcess, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The steady tenant's window, with the cores the service and its nats-server used
    over it (``service_cores``, ``nats_cores``): what the load cost the node, apart from
    its clients on the same machine."""
    result = run_client(
        "bench.loadgen",
        spec,
        on_start=lambda: (time.perf_counter(), svc.cpu()),
        on_end=lambda: (time.perf_counter(), svc.cpu()),
        timeout=timeout,
    )
    (t0, cpu0), (t1, cpu1) = result.pop("at_start"), result.pop("at_end")
    for role in ("service", "nats"):
        result[f"{role}_cores"] = round((cpu1[role] - cpu0[role]) / (t1 - t0), 3)
    return result


def stream_flood(svc: ServiceProcess, accounts: list[str], warmup_s: float, s: float) -> Any:
    """The flooder on ``SubmitCommands`` streams, as fast as it is answered."""
    spec = {
        "host": "127.0.0.1",
        "port": svc.grpc_port,
        "tenant": FLOODER,
        "kind": "stream",
        "accounts": accounts,
        "streams": 2,
        "window": 64,
        "warmup_s": warmup_s,
        "duration_s": s,
        "timeout_s": warmup_s + s + 60,
    }
    return run_client("bench.loadgen", spec, timeout=warmup_s + s + 120)


def shared_connections(
    svc: ServiceProcess, args: argparse.Namespace, steady: list[str], flood: list[str], rate: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both tenants from one client over the same connections: (steady, flooder)."""
    warmup, duration = args.warmup, args.duration
    spec = {
        "host": "127.0.0.1",
        "port": svc.grpc_port,
        "kind": "gateway",
        "client": args.client,
        "lanes": [
            {"tenant": STEADY, "accounts": steady, "rate": args.steady_rate},
            {
                "tenant": FLOODER,
                "accounts": flood,
                "rate": rate,
                "max_pending": args.flooder_max_pending,
            },
        ],
        "warmup_s": warmup,
        "duration_s": duration,
        "timeout_s": warmup + duration + 60,
    }
    result = measured(svc, spec, timeout=warmup + duration + 120)
    flooder = result.pop("lanes")[0]
    return result, flooder


def beside_flooder(
    svc: ServiceProcess, args: argparse.Namespace, steady: list[str], flood: list[str], rate: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The steady loop while the flooder offers ``rate`` commands/s: (steady, flooder)."""
    if args.gateway:
        return shared_connections(svc, args, steady, flood, rate)
    warmup, duration = args.warmup, args.duration
    flooder: dict[str, Any] = {}

    def flooding() -> None:
        # The flooder starts first and runs longer: the steady window is inside it.
        if args.flooder_kind == "stream" and rate > args.quota:
            flooder.update(stream_flood(svc, flood, warmup / 2, duration + warmup))
            return
        flooder.update(
            open_loop(
                svc,
                FLOODER,
                flood,
                rate,
                warmup / 2,
                duration + warmup,
                args.flooder_max_pending,
                args.flooder_nice,
                args.client,
            )
        )

    thread = threading.Thread(target=flooding)
    thread.start()
    beside = open_loop(svc, STEADY, steady, args.steady_rate, warmup, duration, client=args.client)
    thread.join()
    return beside, flooder


def one_round(
    svc: ServiceProcess, args: argparse.Namespace, steady: list[str], flood: list[str]
) -> dict[str, Any]:
    alone = open_loop(
        svc, STEADY, steady, args.steady_rate, args.warmup, args.duration, client=args.client
    )
    say(f"  steady alone: {alone['latency_ms']} errors {alone['errors']}")
    at_quota, flooder_at_quota = beside_flooder(svc, args, steady, flood, float(args.quota))
    say(f"  steady beside the flooder at its quota: {at_quota['latency_ms']}")
    beside, flooder = beside_flooder(svc, args, steady, flood, args.quota * args.flood_factor)
    say(f"  steady beside: {beside['latency_ms']} errors {beside['errors']}")
    say(f"  flooder: {flooder['answered_rate']}/s admitted, errors {flooder['errors']}")
    return {
        "steady_alone": alone,
        "steady_beside_flooder_at_quota": at_quota,
        "steady_beside_flooder": beside,
        "flooder": flooder,
        "flooder_at_quota": flooder_at_quota,
    }


def table(rounds: list[dict[str, Any]], args: argparse.Namespace) -> str:
    flood = (
        "flooding on SubmitCommands streams as fast as answered"
        if args.flooder_kind == "stream"
        else f"offering {args.flood_factor}x"
    )
    shared = "; both over the same connections (--gateway)" if args.gateway else ""
    shared += f"; client {args.client}"
    lines = [
        f"steady tenant at {args.steady_rate}/s; flooder {flood} its quota of {args.quota}/s"
        + shared,
        "| round | p50 alone (ms) | p99 alone (ms) | p99 beside the flooder at its quota (ms) "
        "| p50 beside (ms) | p99 beside (ms) | p99 ratio | ratio to at-quota "
        "| steady errors | flooder admitted/s | flooder refused | flooder skipped "
        "| service cores alone / at quota / beside |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    windows = ("steady_alone", "steady_beside_flooder_at_quota", "steady_beside_flooder")
    for i, rnd in enumerate(rounds, 1):
        alone, beside = (
            rnd["steady_alone"]["latency_ms"],
            rnd["steady_beside_flooder"]["latency_ms"],
        )
        at_quota = rnd["steady_beside_flooder_at_quota"]["latency_ms"]
        errors = {
            **rnd["steady_alone"]["errors"],
            **rnd["steady_beside_flooder_at_quota"]["errors"],
            **rnd["steady_beside_flooder"]["errors"],
        }
        ratio = beside.get("p99", math.nan) / alone.get("p99", math.nan)
        to_quota = beside.get("p99", math.nan) / at_quota.get("p99", math.nan)
        flooder = rnd["flooder"]
        lines.append(
            f"| {i} | {alone.get('p50')} | {alone.get('p99')} | {at_quota.get('p99')} "
            f"| {beside.get('p50')} | {beside.get('p99')} "
            f"| {ratio:.2f} | {to_quota:.2f} | {sum(errors.values())} | {flooder['answered_rate']} "
            f"| {flooder['errors'].get('RESOURCE_EXHAUSTED', 0)} | {flooder.get('skipped', 0)} "
            f"| {' / '.join(str(rnd[w].get('service_cores')) for w in windows)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="one short smoke round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--quota", type=int, default=200, help="commands/s per tenant")
    parser.add_argument("--steady-rate", type=float, default=100.0)
    parser.add_argument("--flood-factor", type=float, default=10.0)
    parser.add_argument(
        "--flooder-max-pending",
        type=int,
        default=800,
        help="calls the flooder has outstanding at most; a send past it is skipped (0: no bound)",
    )
    parser.add_argument(
        "--flooder-nice",
        type=int,
        default=0,
        help="the flooder's client process at this nice value (its CPU off the cores first)",
    )
    parser.add_argument(
        "--pace", type=int, default=None, help="the service's refusal pace (default: its own)"
    )
    parser.add_argument(
        "--flooder-kind",
        choices=("unary", "stream"),
        default="unary",
        help="how the flooder floods: unary calls on a schedule, or SubmitCommands streams",
    )
    parser.add_argument(
        "--gateway",
        action="store_true",
        help="both tenants from one client over the same connections, as an API gateway",
    )
    parser.add_argument(
        "--client",
        choices=("grpclib", "grpcio"),
        default="grpclib",
        help="the load generator's gRPC client in every window (grpcio: native HTTP/2)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if args.client == "grpcio" and args.flooder_kind != "unary":
        parser.error("--client grpcio sends unary calls only")
    if args.gateway and args.flooder_kind != "unary":
        parser.error("--gateway floods with unary calls only")
    if args.quick:  # the same shape at a tenth of the rates: it proves the harness only
        args.rounds, args.duration, args.warmup = 1, 3.0, 0.5
        args.quota, args.steady_rate = max(1, args.quota // 10), args.steady_rate / 10
    workdir = Path(tempfile.mkdtemp(prefix="noisy-neighbour-"))
    svc = ServiceProcess(
        workdir / "storage",
        manifest(workdir),
        env={
            "AGGREGATE_QUOTA_COMMANDS_PER_SECOND": str(args.quota),
            **(
                {}
                if args.pace is None
                else {"AGGREGATE_QUOTA_PACE_REFUSALS_PER_SECOND": str(args.pace)}
            ),
        },
    )
    rounds: list[dict[str, Any]] = []
    svc.start()
    try:
        count = max(1, min(32, args.quota // 2))  # within the quota's burst
        steady = open_accounts(svc, STEADY, count)
        flood = open_accounts(svc, FLOODER, count)
        for n in range(args.rounds):
            say(f"round {n + 1}/{args.rounds}")
            rounds.append(one_round(svc, args, steady, flood))
    finally:
        svc.stop()
    report = table(rounds, args)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"noisy-neighbour-{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps({"args": vars(args), "rounds": rounds, "table": report}, indent=2))
    say(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    steady_errors = sum(
        sum(r[k]["errors"].values())
        for r in rounds
        for k in ("steady_alone", "steady_beside_flooder_at_quota", "steady_beside_flooder")
    )
    refused = sum(r["flooder"]["errors"].get("RESOURCE_EXHAUSTED", 0) for r in rounds)
    if steady_errors or not refused:
        say("FAILED: the steady tenant got errors, or the flooder was never refused")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
