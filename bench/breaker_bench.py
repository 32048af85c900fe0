"""Fail-fast with the event store's breaker open: how long does a refused command take?

    .venv/bin/python bench/breaker_bench.py [--commands N] [--open-ms MS]

Starts the real service (``aggregate serve``, embedded nats-server, the bank example inline)
with a breaker that opens after 3 consecutive failures and a NATS timeout of 500 ms, opens
an account, then stops nats-server (SIGSTOP: it holds its connections and answers nothing,
so every publish waits its timeout). Commands are sent one after another over one grpclib
connection until the breaker answers with ``retry-after-ms``; then ``--commands`` more are
timed, then as many again through grpcio's client (its C core costs the client a fraction of
what grpclib's pure-Python client does, so its round trip is nearer the service's own).
Reported: each client's round trip (p50/p99/max, from send to status), the service's own
time for them (mean, from ``aggregate_command_duration_seconds``), the service's CPU per
refused command; then nats-server is resumed (SIGCONT) and the time to the first command
that succeeds again is measured, the client waiting as each ``retry-after-ms`` says (so it
is bounded by ``--open-ms``). Writes ``bench/results/breaker-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from aggregate.domain.ids import uuid7
from aggregate.gateway.v1 import aggregate_pb2 as pb
from aggregate.gateway.v1.aggregate_grpc import CommandServiceStub
from bench.loadgen import DEPOSIT, percentiles
from bench.noisy_neighbour import manifest, say
from bench.procs import ROOT, ServiceProcess, child_pids, http_get, process_name

RESULTS = ROOT / "bench" / "results"
METADATA = (("x-tenant-id", "acme"),)


async def submit(
    stub: CommandServiceStub, account: str, payload: str
) -> tuple[str, dict[str, str]]:
    """(status name, trailing metadata) of one command."""
    request = pb.SubmitCommandRequest(
        command_id=str(uuid7()),
        aggregate_type="bank-account",
        aggregate_id=account,
        payload_json=payload,
    )
    async with stub.SubmitCommand.open(metadata=METADATA, timeout=30) as stream:
        try:
            await stream.send_message(request, end=True)
            await stream.recv_initial_metadata()
            await stream.recv_message()
            await stream.recv_trailing_metadata()
        except GRPCError as exc:
            trailers = {
                k: v for k, v in (stream.trailing_metadata or {}).items() if isinstance(v, str)
            }
            return exc.status.name, trailers
    return "OK", {}


def duration_totals(svc: ServiceProcess) -> tuple[float, float]:
    """(sum, count) of ``aggregate_command_duration_seconds`` over every label set."""
    status, text = http_get(svc.url("/metrics"))
    if status != 200:
        raise RuntimeError(f"GET /metrics answered {status}")
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("aggregate_command_duration_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("aggregate_command_duration_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def grpcio_window(port: int, account: str, count: int) -> tuple[list[float], dict[str, int]]:
    """``count`` commands one after another through grpcio's client (after 50 unmeasured):
    their round trips and statuses."""
    seconds: list[float] = []
    statuses: dict[str, int] = {}
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        method = channel.unary_unary(
            "/aggregate.gateway.v1.CommandService/SubmitCommand",
            request_serializer=pb.SubmitCommandRequest.SerializeToString,
            response_deserializer=pb.SubmitCommandResponse.FromString,
        )
        for i in range(50 + count):
            request = pb.SubmitCommandRequest(
                command_id=str(uuid7()),
                aggregate_type="bank-account",
                aggregate_id=account,
                payload_json=DEPOSIT,
            )
            sent = time.perf_counter()
            try:
                method(request, metadata=METADATA, timeout=30)
                key = "OK"
            except grpc.RpcError as exc:
                trailers = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
                key = exc.code().name + (" retry-after-ms" if "retry-after-ms" in trailers else "")  # type: ignore[attr-defined]
            if i >= 50:
                seconds.append(time.perf_counter() - sent)
                statuses[key] = statuses.get(key, 0) + 1
    return seconds, statuses


async def measure(svc: ServiceProcess, nats_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    channel = Channel("127.0.0.1", svc.grpc_port)
    stub = CommandServiceStub(channel)
    try:
        account = str(uuid7())
        opened = await submit(stub, account, json.dumps({"type": "OpenAccount", "owner": "ann"}))
        if opened[0] != "OK":
            raise RuntimeError(f"opening the account: {opened}")
        os.kill(nats_pid, signal.SIGSTOP)
        tripping = []
        started = time.perf_counter()
        while not (tripping and "retry-after-ms" in tripping[-1][1]):
            if time.perf_counter() - started > 120:
                raise RuntimeError(f"the breaker did not open: {tripping[-5:]}")
            tripping.append(await submit(stub, account, DEPOSIT))
        say(f"breaker open after {len(tripping)} commands, {time.perf_counter() - started:.1f} s")
        sum0, count0 = duration_totals(svc)
        cpu0 = svc.cpu()["service"]
        seconds: list[float] = []
        statuses: dict[str, int] = {}
        for _ in range(args.commands):
            sent = time.perf_counter()
            status, trailers = await submit(stub, account, DEPOSIT)
            seconds.append(time.perf_counter() - sent)
            key = status + (" retry-after-ms" if "retry-after-ms" in trailers else "")
            statuses[key] = statuses.get(key, 0) + 1
        cpu1 = svc.cpu()["service"]
        sum1, count1 = duration_totals(svc)
        grpcio_seconds, grpcio_statuses = grpcio_window(svc.grpc_port, account, args.commands)
        os.kill(nats_pid, signal.SIGCONT)
        back = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            status, trailers = await submit(stub, account, DEPOSIT)
            if status == "OK":
                break
            if time.perf_counter() - back > 60:
                raise RuntimeError(f"no success within 60 s of NATS resuming: {status}")
            if "retry-after-ms" in trailers:  # the client does what the trailer says
                await asyncio.sleep(int(trailers["retry-after-ms"]) / 1000)
        recovery = time.perf_counter() - back
    finally:
        channel.close()
    served = count1 - count0
    return {
        "commands": args.commands,
        "statuses": statuses,
        "client_round_trip_ms": percentiles([s * 1000 for s in seconds]),
        "grpcio_statuses": grpcio_statuses,
        "grpcio_round_trip_ms": percentiles([s * 1000 for s in grpcio_seconds]),
        "service_mean_ms": round((sum1 - sum0) / served * 1000, 4) if served else None,
        "service_cpu_per_command_us": round((cpu1 - cpu0) / args.commands * 1e6, 1),
        "recovery_s": round(recovery, 3),
        "recovery_attempts": attempts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--open-ms", type=int, default=5000, help="AGGREGATE_BREAKER_OPEN_MS")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="breaker-bench-"))
    svc = ServiceProcess(
        workdir / "storage",
        manifest(workdir),
        env={
            "AGGREGATE_NATS_TIMEOUT_MS": "500",
            "AGGREGATE_BREAKER_FAILURE_THRESHOLD": "3",
            "AGGREGATE_BREAKER_OPEN_MS": str(args.open_ms),
        },
    )
    svc.start()
    nats = [p for p in child_pids(svc.pid) if process_name(p).startswith("nats-server")]
    try:
        if not nats:
            raise RuntimeError("the service has no embedded nats-server")
        result = asyncio.run(measure(svc, nats[0], args))
    finally:
        for pid in nats:  # never leave it stopped
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        svc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"breaker-{stamp}.json"
    out.write_text(json.dumps({"args": vars(args), "result": result}, indent=2))
    say(f"wrote {out}")
    refused = result["statuses"].get("UNAVAILABLE retry-after-ms", 0)
    return 0 if refused >= 0.9 * args.commands else 1


if __name__ == "__main__":
    raise SystemExit(main())
