"""The ceilings the service is measured against, each a separate process on its own
nats-server (same binary as the service's embedded one).

(a) ``grpc-server``: a bare grpclib server exposing the same
    ``aggregate.gateway.v1.CommandService/SubmitCommand`` method; its handler does exactly
    one JetStream publish + ack with ``Nats-Expected-Last-Subject-Sequence``, to the
    aggregate's own subject, and answers. No program, no cache, no snapshot, no metrics:
    what gRPC + one conditional append cost in Python on this machine. The load generator
    drives it exactly as it drives the service.
(b) ``raw``: nats-py conditional publishes on distinct subjects, ``in_flight`` at a time
    (each lane publishes its next message when the previous one is acknowledged, with the
    acknowledged sequence as the expected one), ``js.publish_async`` futures: the rate the
    Python client and the server reach with no gRPC at all.

Both run on the event loop the service's command path runs on (``event_loop`` in the spec:
``uvloop`` or ``asyncio``, as ``AGGREGATE_EVENT_LOOP``; ``bench/run.py`` passes the service's):
they are ceilings of the same stack, so a faster loop raises them as much as the service.

Both write the same message shape the service writes (one JSON body of a command, the same
header names), into a stream created by the service's own ``ensure_stream``.

Run: ``python -m bench.baselines grpc-server`` (spec on stdin: ``nats_url``, ``port``; prints
``READY <port>``, serves until SIGTERM) or ``python -m bench.baselines raw`` (spec on stdin,
the START/END/RESULT protocol of ``bench/procs.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import nats
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from aggregate.adapters.jetstream import StreamPolicy, ensure_stream
from aggregate.bridge import new_event_loop
from aggregate.domain.ids import uuid7
from aggregate.gateway.v1 import aggregate_grpc
from aggregate.gateway.v1 import aggregate_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Coroutine

T = TypeVar("T")

STREAM = "AGGREGATE_EVENTS"


def message(tenant: str, aggregate_type: str, aggregate_id: str, seq: int, payload: str) -> bytes:
    """A body shaped like the service's (DESIGN §4.2): one command, one event."""
    command_id = str(uuid7())
    return json.dumps(
        {
            "tenant_id": tenant,
            "aggregate_type": aggregate_type,
            "aggregate_id": aggregate_id,
            "command_id": command_id,
            "correlation_id": command_id,
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "first_version": seq + 1,
            "events": [
                {
                    "event_id": str(uuid7()),
                    "event_type": "MoneyDeposited",
                    "version": seq + 1,
                    "payload": json.loads(payload),
                    "timestamp": "2025-01-01T00:00:00.000Z",
                }
            ],
        }
    ).encode()


def headers(tenant: str, subject: str, expected: int, aggregate_id: str) -> dict[str, str]:
    msg_id = str(uuid7())
    return {
        "Nats-Msg-Id": f"{subject}:{msg_id}",
        "Nats-Expected-Last-Subject-Sequence": str(expected),
        "tenant-id": tenant,
        "x-correlation-id": msg_id,
        "correlation-id": msg_id,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "trace-id": "0af7651916cd43dd8448eb211c80319c",
        "command-id": msg_id,
        "aggregate-type": "bank-account",
        "aggregate-id": aggregate_id,
        "version": str(expected + 1),
        "content-type": "application/json",
    }


class BareCommandService(aggregate_grpc.CommandServiceBase):
    """``SubmitCommand`` = one conditional publish + ack; the rest is UNIMPLEMENTED."""

    def __init__(self, js: Any) -> None:
        self.js = js
        self.last_seq: dict[str, int] = {}

    async def SubmitCommand(
        self, stream: Stream[pb.SubmitCommandRequest, pb.SubmitCommandResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        tenant = str(dict(stream.metadata or {}).get("x-tenant-id", "_default"))
        subject = f"tenant.{tenant}.aggregate.{request.aggregate_type}.{request.aggregate_id}"
        expected = self.last_seq.get(subject, 0)
        ack = await self.js.publish(
            subject,
            message(
                tenant, request.aggregate_type, request.aggregate_id, expected, request.payload_json
            ),
            headers=headers(tenant, subject, expected, request.aggregate_id),
        )
        self.last_seq[subject] = ack.seq
        await stream.send_message(
            pb.SubmitCommandResponse(
                tenant_id=tenant,
                aggregate_type=request.aggregate_type,
                aggregate_id=request.aggregate_id,
                command_id=request.command_id,
                version=ack.seq,
            )
        )

    async def SubmitCommands(
        self, stream: Stream[pb.SubmitCommandRequest, pb.SubmitCommandResult]
    ) -> None:
        raise GRPCError(Status.UNIMPLEMENTED)

    async def GetAggregate(self, stream: Stream[pb.GetAggregateRequest, pb.AggregateView]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED)


async def grpc_server(spec: dict[str, Any]) -> None:
    nc = await nats.connect(spec["nats_url"])
    js = nc.jetstream(timeout=5.0)
    await ensure_stream(js, StreamPolicy(name=STREAM))
    server = Server([BareCommandService(js)])
    await server.start("127.0.0.1", int(spec["port"]))
    print(f"READY {spec['port']}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()
    await nc.drain()


async def raw(spec: dict[str, Any]) -> dict[str, Any]:
    """``in_flight`` lanes, each on its own subject, publishing conditionally until the
    window closes (``warmup_s``, then ``duration_s``, at most ``max_count``)."""
    nc = await nats.connect(spec["nats_url"])
    js = nc.jetstream(timeout=5.0, publish_async_max_pending=100_000)
    await ensure_stream(js, StreamPolicy(name=STREAM))
    in_flight = int(spec.get("in_flight", 64))
    warmup_s, duration_s = float(spec.get("warmup_s", 1.0)), float(spec["duration_s"])
    max_count = int(spec.get("max_count", 10_000_000))
    run_id = uuid7().hex
    window: dict[str, float] = {}
    counted = 0
    latencies: list[float] = []
    stop = asyncio.Event()

    async def lane(i: int) -> None:
        nonlocal counted
        aggregate_id = f"{run_id}-{i}"
        subject = f"tenant.bench.aggregate.bank-account.{aggregate_id}"
        expected = 0
        payload = json.dumps({"type": "Deposit", "amount": 1})
        for _ in range(max_count + 1_000_000):  # bounded; `stop` ends it in time
            if stop.is_set():
                return
            started = time.perf_counter()
            future = await js.publish_async(
                subject,
                message("bench", "bank-account", aggregate_id, expected, payload),
                headers=headers("bench", subject, expected, aggregate_id),
            )
            ack = await asyncio.wait_for(future, 5.0)
            expected = ack.seq
            if "start" in window and "end" not in window and started >= window["start"]:
                counted += 1
                latencies.append((time.perf_counter() - started) * 1000)
                if counted >= max_count:
                    stop.set()

    async def clock() -> None:
        await asyncio.sleep(warmup_s)
        window["cpu_start"] = time.process_time()
        window["start"] = time.perf_counter()
        print("START", flush=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), duration_s)
        window["end"] = time.perf_counter()
        window["cpu_end"] = time.process_time()
        print("END", flush=True)
        stop.set()

    try:
        await asyncio.gather(clock(), *(lane(i) for i in range(in_flight)))
    finally:
        await nc.drain()
    from bench.loadgen import percentiles

    elapsed = window["end"] - window["start"]
    return {
        "count": counted,
        "elapsed_s": round(elapsed, 4),
        "rate": round(counted / elapsed, 1),
        "latency_ms": percentiles(latencies),
        "errors": {},
        "client_cpu_s": round(window["cpu_end"] - window["cpu_start"], 3),
        "in_flight": in_flight,
    }


def _run(main: Coroutine[Any, Any, T], event_loop: str) -> T:
    """``main`` on a new loop of kind ``event_loop`` (``uvloop`` or ``asyncio``)."""
    with asyncio.Runner(loop_factory=partial(new_event_loop, event_loop)) as runner:
        return runner.run(main)


if __name__ == "__main__":
    mode, spec = sys.argv[1], json.load(sys.stdin)
    loop = str(spec.get("event_loop", "asyncio"))
    if mode == "grpc-server":
        _run(grpc_server(spec), loop)
    elif mode == "raw":
        result = _run(asyncio.wait_for(raw(spec), float(spec.get("timeout_s", 300))), loop)
        result["kind"] = "raw"
        print("RESULT " + json.dumps(result), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}: grpc-server or raw")
