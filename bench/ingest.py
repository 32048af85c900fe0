"""Benchmark usage ingestion against the gRPC streaming path, in the same run.

    .venv/bin/python bench/ingest.py [--records N] [--sources S] [--accounts A]
                                     [--rounds R] [--isolation inline|process] [--keep]

Starts the real service (``aggregate serve``, embedded nats-server, the billing ledger) with
a directory source root holding ``S`` node directories (default 10), and per round:

1. **ingestion**: writes ``N`` new usage records (default 100,000) as hourly batch files of
   1,000 records spread over the ``S`` nodes and ``A`` accounts, then ``POST
   /admin/ingest/run`` and waits for its summary;
2. **gRPC streaming**: a separate client process (``python -m bench.ingest --client``)
   sends ``N`` other ``RecordUsage`` commands to the same ledgers over ``SubmitCommands``
   streams (4 streams, 64 in flight each), the load generator's pipelined client.

Each reports records/s (wall clock) and CPU per record (service + nats-server + program
workers, from /proc), and the ratio ingestion / streaming. Every record of both paths is a
real first charge (distinct keys). Writes ``bench/results/ingest-<timestamp>.json``. The
service gets none of the caller's ``AGGREGATE_*`` variables. Everything runs in a temporary
directory, removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregate.config import example_manifest_path
from bench.procs import ROOT, ServiceProcess, run_client

RESULTS = ROOT / "bench" / "results"
TENANT = "bench"
PER_FILE = 1000
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def write_manifest(workdir: Path, isolation: str) -> Path:
    program = example_manifest_path("billing").parent / "billing.star"
    path = workdir / f"billing-{isolation}.yaml"
    path.write_text(
        "aggregate_types:\n"
        "  billing-account:\n"
        "    language: starlark\n"
        f"    isolation: {isolation}\n"
        f"    decide: {program}\n"
        f"    apply: {program}\n"
        "    initial_state: {balance_cents: 0, topups: {}, charged: {}, nodes: {}}\n"
    )
    return path


def record(prefix: str, i: int, accounts: int) -> dict[str, Any]:
    return {
        "idempotency_key": f"{prefix}-{i}",
        "cost_cents": 1 + i % 7,
        "user_sid": f"acct-{i % accounts}",
    }


def write_batches(root: Path, prefix: str, count: int, sources: int, accounts: int) -> None:
    """``count`` records in files of ``PER_FILE``, round-robin over the node directories."""
    for f, start in enumerate(range(0, count, PER_FILE)):
        node = f"node{f % sources:02d}"
        records = [record(prefix, i, accounts) for i in range(start, min(count, start + PER_FILE))]
        path = root / "nodes" / node / f"usage_{prefix}-{f:05d}.json"
        path.write_text(json.dumps({"records": records}))


def admin_run(svc: ServiceProcess, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(svc.url("/admin/ingest/run"), data=b"{}", method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        summary: dict[str, Any] = json.loads(response.read())
    return summary


def cpu_total(sample: dict[str, float]) -> float:
    return sum(sample.values())


def ingestion_round(
    svc: ServiceProcess, root: Path, prefix: str, args: argparse.Namespace
) -> dict[str, Any]:
    write_batches(root, prefix, args.records, args.sources, args.accounts)
    cpu0, t0 = svc.cpu(), time.perf_counter()
    summary = admin_run(svc, timeout=args.timeout)
    wall, cpu1 = time.perf_counter() - t0, svc.cpu()
    if summary["charged"] != args.records or not summary["ok"]:
        raise RuntimeError(f"ingestion charged {summary['charged']} of {args.records}: {summary}")
    return {
        "records": args.records,
        "wall_s": round(wall, 3),
        "records_per_s": round(args.records / wall, 1),
        "cpu_us_per_record": round((cpu_total(cpu1) - cpu_total(cpu0)) / args.records * 1e6, 1),
        "cpu_s": {k: round(cpu1[k] - cpu0[k], 3) for k in cpu1},
    }


def streaming_round(svc: ServiceProcess, prefix: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = {
        "host": "127.0.0.1",
        "port": svc.grpc_port,
        "tenant": TENANT,
        "prefix": prefix,
        "count": args.records,
        "accounts": args.accounts,
        "streams": 4,
        "window": 64,
        "timeout": args.timeout,
    }
    marks: dict[str, Any] = {}

    def start() -> None:
        marks["cpu0"], marks["t0"] = svc.cpu(), time.perf_counter()

    def end() -> None:
        marks["cpu1"], marks["t1"] = svc.cpu(), time.perf_counter()

    result = run_client(
        "bench.ingest", spec, on_start=start, on_end=end, timeout=args.timeout, args=["--client"]
    )
    if result["errors"]:
        raise RuntimeError(f"streaming errors: {result['errors']}")
    wall = marks["t1"] - marks["t0"]
    return {
        "records": args.records,
        "wall_s": round(wall, 3),
        "records_per_s": round(args.records / wall, 1),
        "cpu_us_per_record": round(
            (cpu_total(marks["cpu1"]) - cpu_total(marks["cpu0"])) / args.records * 1e6, 1
        ),
        "client_cpu_s": result["client_cpu_s"],
    }


# ---- the streaming client (a separate process) ----------------------------------------
async def client(spec: dict[str, Any]) -> dict[str, Any]:
    from grpclib.client import Channel

    from aggregate.gateway.v1 import aggregate_pb2 as pb
    from aggregate.gateway.v1.aggregate_grpc import CommandServiceStub
    from aggregate.ingest.records import account_aggregate_id
    from bench.loadgen import _pipelined

    count, accounts, streams = int(spec["count"]), int(spec["accounts"]), int(spec["streams"])
    tenant, prefix = spec["tenant"], spec["prefix"]
    errors: dict[str, int] = {}

    def requests(lane: int) -> Any:
        for i in range(lane, count, streams):
            r = record(prefix, i, accounts)
            payload = {"type": "RecordUsage", "node_name": "grpc", **r}
            yield pb.SubmitCommandRequest(
                command_id=str(uuid.uuid4()),
                aggregate_type="billing-account",
                aggregate_id=str(account_aggregate_id(tenant, r["user_sid"])),
                payload_json=json.dumps(payload),
            )

    def on_result(sent_at: float, ms: float, error: str | None) -> None:
        if error:
            errors[error] = errors.get(error, 0) + 1

    channel = Channel(spec["host"], int(spec["port"]))
    cpu0 = time.process_time()
    print("START", flush=True)
    try:
        stub = CommandServiceStub(channel)
        metadata = [("x-tenant-id", tenant)]
        await asyncio.gather(
            *(
                _pipelined(
                    stub,
                    metadata,
                    requests(s),
                    int(spec["window"]),
                    on_result,
                    timeout_s=float(spec.get("timeout", 1800.0)),
                )
                for s in range(streams)
            )
        )
    finally:
        print("END", flush=True)
        channel.close()
    return {"count": count, "errors": errors, "client_cpu_s": round(time.process_time() - cpu0, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--sources", type=int, default=10)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--isolation", choices=("inline", "process"), default="inline")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per step")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        result = asyncio.run(client(json.load(sys.stdin)))
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="aggregate-bench-ingest-"))
    root = workdir / "billing"
    for s in range(args.sources):
        (root / "nodes" / f"node{s:02d}").mkdir(parents=True)
    svc = ServiceProcess(
        workdir / "store",
        write_manifest(workdir, args.isolation),
        env={
            "AGGREGATE_INGEST_SOURCES": json.dumps(
                [{"kind": "directory", "root": str(root), "tenant": TENANT}]
            ),
            "AGGREGATE_INGEST_INTERVAL_MS": str(24 * 3600 * 1000),
            "AGGREGATE_INGEST_MAX_FILES_PER_SOURCE": "5000",
        },
    )
    rounds: list[dict[str, Any]] = []
    ok = False
    try:
        say(f"starting the service ({args.isolation} programs) in {workdir}")
        svc.start()
        admin_run(svc, timeout=args.timeout)  # the run at start-up is over (nothing to read)
        for n in range(args.rounds):
            ingest = ingestion_round(svc, root, f"r{n}f", args)
            say(f"round {n + 1}: ingestion {ingest['records_per_s']:.0f} records/s, "
                f"{ingest['cpu_us_per_record']:.0f} us CPU per record")  # fmt: skip
            stream = streaming_round(svc, f"r{n}g", args)
            say(f"round {n + 1}: gRPC streaming {stream['records_per_s']:.0f} records/s, "
                f"{stream['cpu_us_per_record']:.0f} us CPU per record")  # fmt: skip
            rounds.append({"ingestion": ingest, "grpc_stream": stream})
        ok = True
    finally:
        svc.stop()
        if not ok or args.keep:
            say(f"kept {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)

    def median(path: tuple[str, str]) -> float:
        values = sorted(r[path[0]][path[1]] for r in rounds)
        return values[len(values) // 2]

    summary = {
        "ingestion_records_per_s": median(("ingestion", "records_per_s")),
        "grpc_stream_records_per_s": median(("grpc_stream", "records_per_s")),
        "ingestion_cpu_us_per_record": median(("ingestion", "cpu_us_per_record")),
        "grpc_stream_cpu_us_per_record": median(("grpc_stream", "cpu_us_per_record")),
    }
    summary["throughput_ratio"] = round(
        summary["ingestion_records_per_s"] / summary["grpc_stream_records_per_s"], 3
    )
    summary["cpu_ratio"] = round(
        summary["ingestion_cpu_us_per_record"] / summary["grpc_stream_cpu_us_per_record"], 3
    )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"ingest-{stamp}.json"
    with contextlib.suppress(OSError):
        out.write_text(json.dumps({"args": vars(args), "rounds": rounds, "summary": summary,
                                   "cpus": os.cpu_count()}, indent=2))  # fmt: skip
    print(json.dumps(summary, indent=2))
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
