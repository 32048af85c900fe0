"""Watch delivery after ack: how long after a command's answer each of N connected watchers
receives its change (``python -m bench.watch_bench --watchers 100 --commands 200``).

Starts ``aggregate serve`` (embedded nats-server, the bank example) on free ports, opens N
``WatchAggregates`` calls from now on one tenant (grpclib, one connection each), submits
the commands one at a time, and records for every (command, watcher) the time between the
command's answer arriving and the change arriving at the watcher; prints p50/p99/max in ms
as one JSON object. Same-run figures only: the client and the service share the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from grpclib.client import Channel

from aggregate.gateway.v1 import aggregate_grpc, query_grpc
from aggregate.gateway.v1 import aggregate_pb2 as pb
from aggregate.gateway.v1 import query_pb2 as qpb

TENANT = {"x-tenant-id": "bench"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(storage: str) -> tuple[subprocess.Popen[str], int]:
    port, http = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATE_")}
    env["AGGREGATE_LOG_LEVEL"] = "info"  # the "serving" line is at info
    proc = subprocess.Popen(
        [sys.executable, "-m", "aggregate.cli", "serve", "--example", "bank", "--storage",
         storage, "--grpc-addr", f"127.0.0.1:{port}", "--http-addr", f"127.0.0.1:{http}"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if "serving gRPC on" in line:
            drain = proc.stderr
            threading.Thread(target=drain.read, daemon=True).start()
            return proc, port
    raise RuntimeError("the service did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(port: int, watchers: int, commands: int) -> dict[str, Any]:
    arrivals: dict[int, list[float]] = {}
    channels = [Channel("127.0.0.1", port) for _ in range(watchers)]
    ready = 0
    all_ready, all_arrived = asyncio.Event(), asyncio.Event()
    expected = watchers * (commands + 1)  # the opening and every deposit
    arrived = 0

    async def watch(channel: Channel) -> None:
        nonlocal ready, arrived
        stub = query_grpc.QueryServiceStub(channel)
        async with stub.WatchAggregates.open(metadata=TENANT) as stream:
            await stream.send_message(qpb.WatchAggregatesRequest(), end=True)
            await stream.recv_initial_metadata()
            ready += 1
            if ready == watchers:
                all_ready.set()
            while (change := await stream.recv_message()) is not None:
                arrivals.setdefault(change.position, []).append(time.perf_counter())
                arrived += 1
                if arrived >= expected:
                    all_arrived.set()

    tasks = [asyncio.create_task(watch(c)) for c in channels]
    await asyncio.wait_for(all_ready.wait(), 60)
    await asyncio.sleep(0.2)  # the last watch registers after its initial metadata
    client = Channel("127.0.0.1", port)
    stub = aggregate_grpc.CommandServiceStub(client)
    opened = await stub.SubmitCommand(
        pb.SubmitCommandRequest(aggregate_type="bank-account",
                                payload_json='{"type":"OpenAccount","owner":"b"}'),
        metadata=TENANT,
    )  # fmt: skip
    acks: dict[int, float] = {}
    for _ in range(commands):
        reply = await stub.SubmitCommand(
            pb.SubmitCommandRequest(aggregate_type="bank-account",
                                    aggregate_id=opened.aggregate_id,
                                    payload_json='{"type":"Deposit","amount":1}'),
            metadata=TENANT,
        )  # fmt: skip
        acks[reply.position] = time.perf_counter()
    with contextlib.suppress(TimeoutError):  # what did not arrive is reported as missing
        await asyncio.wait_for(all_arrived.wait(), 30)
    delays = [(t - acks[p]) * 1000 for p in acks for t in arrivals.get(p, ())]
    missing = sum(watchers - len(arrivals.get(p, ())) for p in acks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in [*channels, client]:
        channel.close()
    return {
        "watchers": watchers,
        "commands": commands,
        "deliveries": len(delays),
        "missing": missing,
        "p50_ms": round(percentile(delays, 0.50), 2),
        "p99_ms": round(percentile(delays, 0.99), 2),
        "max_ms": round(max(delays), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--commands", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as storage:
        proc, port = start_service(storage)
        try:
            print(json.dumps(asyncio.run(run(port, args.watchers, args.commands))))
        finally:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    main()
