"""The load generator: a separate process that drives a ``CommandService`` over gRPC.

Run by ``bench/run.py`` as ``python -m bench.loadgen`` with a JSON spec on stdin; it prints
``START``/``END`` around its measured window and ``RESULT <json>`` at the end (see
``bench/procs.py``). The same client drives the service and baseline (a), the bare grpclib
server, so their numbers compare like for like.

Workloads (``spec["kind"]``):

- ``unary``: ``clients`` closed-loop clients, each on its own channel (HTTP/2 connection),
  each sending ``Deposit`` to ``accounts[i % len(accounts)]`` (one account for all: the hot
  aggregate);
- ``stream``: ``streams`` ``SubmitCommands`` streams, each with ``window`` commands in
  flight, cycling over its share of ``accounts``;
- ``open_loop``: ``Deposit`` sent on a fixed schedule (``rate`` per second) whatever the
  answers do; a command's latency counts from its *scheduled* send time, so a stalled server
  cannot hide its queueing (no coordinated omission); with ``max_pending``, a send due while
  that many calls are outstanding is skipped and counted (``skipped``), as a client with a
  bounded pool of calls would;
- ``gateway``: several ``open_loop`` lanes (``lanes``: each a ``tenant``, its ``accounts``,
  ``rate`` and optional ``max_pending``) sharing one set of ``channels`` (default 8), as an
  API gateway multiplexes its tenants' calls over shared HTTP/2 connections; one measured
  window for all; the result is the first lane's, the others under ``lanes``; ``open_loop``
  and ``gateway`` take ``client``: ``grpclib`` (default) or ``grpcio``, whose HTTP/2 is
  native code as a real gateway's is (its Python side still costs the client about as
  much CPU per call as grpclib's);
- ``batch``: set-up work (open accounts, fill histories) pipelined over streams;
- ``get``: ``GetAggregate`` of each listed aggregate once, after warming the connection
  (cold rehydration right after a service restart).

Every loop is bounded by a count and by time; ``timeout_s`` bounds the whole process.
``spec["nice"]`` (optional) lowers the process's CPU priority by that much first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import sys
import time
import uuid
from typing import Any

import grpclib.const
import grpclib.exceptions
from grpclib.client import Channel

from aggregate.domain.ids import uuid7
from aggregate.gateway.v1 import aggregate_pb2 as pb
from aggregate.gateway.v1.aggregate_grpc import CommandServiceStub
from bench.procs import http_get, metric_total

CALL_TIMEOUT_S = 10.0
DEPOSIT = json.dumps({"type": "Deposit", "amount": 1})


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50/p90/p99/p999/max/mean of latencies in milliseconds (nearest rank)."""
    if not samples_ms:
        return {}
    ordered = sorted(samples_ms)
    last = len(ordered) - 1

    def rank(q: float) -> float:
        return round(ordered[min(last, int(q * len(ordered)))], 3)

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "p999": rank(0.999),
        "max": round(ordered[-1], 3),
        "mean": round(sum(ordered) / len(ordered), 3),
        "n": len(ordered),
    }


def error_name(exc: BaseException) -> str:
    if isinstance(exc, grpclib.exceptions.GRPCError):
        return exc.status.name
    if isinstance(exc, asyncio.TimeoutError):
        return "TIMEOUT"
    return type(exc).__name__


def request(account: str, payload: str = DEPOSIT) -> pb.SubmitCommandRequest:
    return pb.SubmitCommandRequest(
        command_id=str(uuid7()),
        aggregate_type="bank-account",
        aggregate_id=account,
        payload_json=payload,
    )


class Window:
    """The measured window: opens after ``warmup_s``, closes after ``duration_s`` or at
    ``max_count`` counted commands, whichever comes first. A command counts (``count``,
    its latency, its error) when it was sent inside the window and answered before it
    closed; ``answered`` counts the successes that arrived while it was open, whenever
    they were sent (``answered_rate``: what a server paced or queued got done in the
    window, which ``rate`` reads low by about the latency over the window's length)."""

    def __init__(self, spec: dict[str, Any], lead: Window | None = None) -> None:
        self.lead = lead
        """A window that opens and closes with ``lead`` (which alone ``run``s)."""
        self.warmup_s = float(spec.get("warmup_s", 1.0))
        self.duration_s = float(spec["duration_s"])
        self.max_count = int(spec.get("max_count", 10_000_000))
        self.opened_at: float | None = None
        self.closed_at: float | None = None
        self.count = 0
        self.answered = 0
        self.latencies: list[float] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.cpu_start = 0.0
        self.cpu_end = 0.0
        self.full = asyncio.Event()
        self.stop = asyncio.Event()

    def _times(self) -> tuple[float | None, float | None]:
        times = self.lead or self
        return times.opened_at, times.closed_at

    def measuring(self, started: float) -> bool:
        opened, closed = self._times()
        return opened is not None and closed is None and started >= opened

    def within(self, at: float) -> bool:
        """Whether ``at`` falls inside the window, as far as it is open or closed now."""
        opened, closed = self._times()
        return opened is not None and at >= opened and (closed is None or at < closed)

    def record(self, started: float, ms: float, error: str | None = None) -> None:
        opened, closed = self._times()
        if error is None and opened is not None and closed is None:
            self.answered += 1
        if not self.measuring(started):
            return
        if error is None:
            self.count += 1
            self.latencies.append(ms)
            if self.count >= self.max_count:
                self.full.set()
        else:
            self.errors[error] += 1

    async def run(self) -> None:
        """Warm up, open, wait, close; sets ``stop`` for the workers."""
        await asyncio.sleep(self.warmup_s)
        self.cpu_start = time.process_time()
        self.opened_at = time.perf_counter()
        print("START", flush=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.full.wait(), self.duration_s)
        self.closed_at = time.perf_counter()
        self.cpu_end = time.process_time()
        print("END", flush=True)
        self.stop.set()

    def result(self, **extra: Any) -> dict[str, Any]:
        times = self.lead or self
        assert times.opened_at is not None
        assert times.closed_at is not None
        elapsed = times.closed_at - times.opened_at
        return {
            "count": self.count,
            "elapsed_s": round(elapsed, 4),
            "rate": round(self.count / elapsed, 1) if elapsed > 0 else 0.0,
            "answered_rate": round(self.answered / elapsed, 1) if elapsed > 0 else 0.0,
            "latency_ms": percentiles(self.latencies),
            "errors": dict(self.errors),
            "client_cpu_s": round(times.cpu_end - times.cpu_start, 3),
            **extra,
        }


def target(spec: dict[str, Any]) -> tuple[str, int, list[tuple[str, str]]]:
    return spec["host"], int(spec["port"]), [("x-tenant-id", spec["tenant"])]


async def unary(spec: dict[str, Any]) -> dict[str, Any]:
    host, port, metadata = target(spec)
    accounts: list[str] = spec["accounts"]
    window = Window(spec)
    channels = [Channel(host, port) for _ in range(int(spec["clients"]))]

    async def client(i: int, stub: CommandServiceStub) -> None:
        account = accounts[i % len(accounts)]
        while not window.stop.is_set():
            started = time.perf_counter()
            try:
                await stub.SubmitCommand(
                    request(account), metadata=metadata, timeout=CALL_TIMEOUT_S
                )
            except (TimeoutError, grpclib.exceptions.GRPCError, OSError) as exc:
                window.record(started, 0.0, error_name(exc))
                await asyncio.sleep(0.01)  # a refusing server must not turn this into a spin
                continue
            window.record(started, (time.perf_counter() - started) * 1000)

    try:
        stubs = [CommandServiceStub(channel) for channel in channels]
        await asyncio.gather(window.run(), *(client(i, s) for i, s in enumerate(stubs)))
    finally:
        for channel in channels:
            channel.close()
    return window.result(clients=len(channels))


async def _pipelined(
    stub: CommandServiceStub,
    metadata: list[tuple[str, str]],
    requests: collections.abc.Iterator[pb.SubmitCommandRequest],
    in_flight: int,
    on_result: collections.abc.Callable[[float, float, str | None], None],
    stop: asyncio.Event | None = None,
    timeout_s: float = 600,
) -> None:
    """Send ``requests`` on one ``SubmitCommands`` stream with at most ``in_flight``
    unanswered; ``on_result(sent_at, ms, error)`` per result, in order."""
    slots = asyncio.Semaphore(in_flight)
    sent: collections.deque[float] = collections.deque()
    async with stub.SubmitCommands.open(metadata=metadata, timeout=timeout_s) as stream:
        await stream.send_request()

        async def send() -> None:
            for item in requests:
                await slots.acquire()
                if stop is not None and stop.is_set():
                    break
                sent.append(time.perf_counter())
                await stream.send_message(item)
            await stream.end()

        async def receive() -> None:
            while (result := await stream.recv_message()) is not None:
                sent_at = sent.popleft()
                slots.release()
                error = result.error.code if result.HasField("error") else None
                on_result(sent_at, (time.perf_counter() - sent_at) * 1000, error)

        await asyncio.gather(send(), receive())


async def stream(spec: dict[str, Any]) -> dict[str, Any]:
    host, port, metadata = target(spec)
    accounts: list[str] = spec["accounts"]
    streams, in_flight = int(spec["streams"]), int(spec["window"])
    window = Window(spec)
    channel = Channel(host, port)

    def requests(share: list[str]) -> collections.abc.Iterator[pb.SubmitCommandRequest]:
        for i in range(window.max_count + 100_000_000):  # bounded; `stop` ends it first
            yield request(share[i % len(share)])

    def on_result(sent_at: float, ms: float, error: str | None) -> None:
        window.record(sent_at, ms, error)

    try:
        stub = CommandServiceStub(channel)
        lanes = [
            _pipelined(
                stub, metadata, requests(accounts[s::streams]), in_flight, on_result, window.stop
            )
            for s in range(streams)
        ]
        await asyncio.gather(window.run(), *lanes)
    finally:
        channel.close()
    return window.result(streams=streams, window=in_flight)


class _Lane:
    """One tenant's open loop on shared stubs: ``rate`` sends a second on a fixed schedule."""

    def __init__(
        self,
        stubs: list[Any],
        tenant: str,
        accounts: list[str],
        rate: float,
        window: Window,
        max_pending: int = 0,
    ) -> None:
        self.stubs = stubs
        self.metadata = [("x-tenant-id", tenant)]
        self.accounts = accounts
        self.rate = rate
        self.window = window
        self.max_pending = max_pending  # 0: unbounded
        self.pending: set[asyncio.Task[None]] = set()
        self.worst_lag = 0.0
        self.skipped = 0
        self.freed = asyncio.Event()

    async def call(self, i: int, scheduled: float) -> None:
        try:
            await self.stubs[i % len(self.stubs)].SubmitCommand(
                request(self.accounts[i % len(self.accounts)]),
                metadata=self.metadata,
                timeout=CALL_TIMEOUT_S,
            )
        except (TimeoutError, grpclib.exceptions.GRPCError, OSError) as exc:
            self.window.record(scheduled, 0.0, error_name(exc))
            return
        self.window.record(scheduled, (time.perf_counter() - scheduled) * 1000)

    async def schedule(self) -> None:
        window, rate = self.window, self.rate
        stop = (window.lead or window).stop
        total = int(rate * (window.warmup_s + window.duration_s + 1)) + 1
        start = time.perf_counter()
        i = 0
        while i < total:  # bounded in count; `stop` ends it in time
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop.is_set():
                break
            if self.max_pending and len(self.pending) >= self.max_pending:
                # A client at its own limit: every send due until one of its calls ends is
                # skipped (counted here, without waking for each of them).
                await self._slot_or(stop)
                due = min(total, int((time.perf_counter() - start) * rate) + 1)
                self.skipped += sum(window.within(start + j / rate) for j in range(i, due))
                i = due
                continue
            if window.measuring(scheduled):
                self.worst_lag = max(self.worst_lag, time.perf_counter() - scheduled)
            task = asyncio.get_running_loop().create_task(self.call(i, scheduled))
            self.pending.add(task)
            task.add_done_callback(self._ended)
            i += 1

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.pending.discard(task)
        self.freed.set()

    async def _slot_or(self, stop: asyncio.Event) -> None:
        """Until a call ends (a slot is free) or ``stop``."""
        self.freed.clear()
        waiters = [asyncio.ensure_future(self.freed.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def drain(self) -> None:
        if self.pending:
            await asyncio.wait(self.pending, timeout=CALL_TIMEOUT_S + 1)

    def result(self) -> dict[str, Any]:
        return self.window.result(
            offered_rate=self.rate,
            worst_send_lag_ms=round(self.worst_lag * 1000, 3),
            skipped=self.skipped,
        )


async def open_loop(spec: dict[str, Any]) -> dict[str, Any]:
    return await gateway(
        {
            **spec,
            "lanes": [
                {
                    "tenant": spec["tenant"],
                    "accounts": spec["accounts"],
                    "rate": spec["rate"],
                    "max_pending": spec.get("max_pending", 0),
                }
            ],
        }
    )


class _GrpcioStub:
    """``SubmitCommand`` over a grpcio (C-core) channel, with grpclib's stub's signature
    and errors: its HTTP/2 is native code, as an API gateway's (Envoy's, nginx's) is."""

    def __init__(self, host: str, port: int) -> None:
        import grpc.aio

        self._grpc = grpc
        # its own connection: grpcio shares one per target between channels by default
        self.channel = grpc.aio.insecure_channel(
            f"{host}:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self._call = self.channel.unary_unary(
            "/aggregate.gateway.v1.CommandService/SubmitCommand",
            request_serializer=pb.SubmitCommandRequest.SerializeToString,
            response_deserializer=pb.SubmitCommandResponse.FromString,
        )

    async def SubmitCommand(
        self,
        req: pb.SubmitCommandRequest,
        *,
        metadata: Any,
        timeout: float,  # noqa: ASYNC109 (grpclib's stub's signature)
    ) -> pb.SubmitCommandResponse:
        try:
            answer: pb.SubmitCommandResponse = await self._call(
                req, metadata=metadata, timeout=timeout
            )
            return answer
        except self._grpc.aio.AioRpcError as exc:
            code = exc.code().name
            if code == "DEADLINE_EXCEEDED":
                raise TimeoutError from None
            raise grpclib.exceptions.GRPCError(grpclib.const.Status[code]) from None


async def gateway(spec: dict[str, Any]) -> dict[str, Any]:
    """``client``: ``grpclib`` (the default) or ``grpcio``."""
    host, port, count = spec["host"], int(spec["port"]), int(spec.get("channels", 8))
    closers: list[Any]
    stubs: list[Any]
    if spec.get("client", "grpclib") == "grpcio":
        stubs = [_GrpcioStub(host, port) for _ in range(count)]
        closers = [s.channel.close for s in stubs]
    else:
        channels = [Channel(host, port) for _ in range(count)]
        stubs = [CommandServiceStub(c) for c in channels]
        closers = [c.close for c in channels]
    lead = Window(spec)
    lanes = [
        _Lane(
            stubs,
            lane["tenant"],
            lane["accounts"],
            float(lane["rate"]),
            lead if n == 0 else Window(spec, lead),
            int(lane.get("max_pending", 0)),
        )
        for n, lane in enumerate(spec["lanes"])
    ]
    try:
        await asyncio.gather(lead.run(), *(lane.schedule() for lane in lanes))
        for lane in lanes:
            await lane.drain()
    finally:
        for close in closers:
            done = close()
            if asyncio.iscoroutine(done):
                await done
    results = [lane.result() for lane in lanes]
    return {**results[0], "lanes": results[1:]} if len(results) > 1 else results[0]


async def batch(spec: dict[str, Any]) -> dict[str, Any]:
    """``targets``: ``[[aggregate_id, n], ...]``; ``command``: ``open`` (n = 1) or
    ``deposit``. Target k goes to stream ``k % streams``, so one aggregate stays on one
    stream, in order."""
    host, port, metadata = target(spec)
    payload = DEPOSIT
    if spec["command"] == "open":
        payload = json.dumps({"type": "OpenAccount", "owner": "bench"})
    targets: list[tuple[str, int]] = [(str(t[0]), int(t[1])) for t in spec["targets"]]
    streams = max(1, min(int(spec.get("streams", 4)), len(targets)))
    errors: collections.Counter[str] = collections.Counter()
    ok = 0

    def requests(share: list[tuple[str, int]]) -> collections.abc.Iterator[pb.SubmitCommandRequest]:
        for j in range(max((n for _, n in share), default=0)):
            for account, n in share:
                if j < n:
                    yield request(account, payload)

    def on_result(_sent_at: float, _ms: float, error: str | None) -> None:
        nonlocal ok
        if error is None:
            ok += 1
        else:
            errors[error] += 1

    channel = Channel(host, port)
    started = time.perf_counter()
    try:
        stub = CommandServiceStub(channel)
        await asyncio.gather(
            *(
                _pipelined(
                    stub,
                    metadata,
                    requests(targets[s::streams]),
                    int(spec.get("window", 64)),
                    on_result,
                    timeout_s=float(spec.get("timeout_s", 600)),
                )
                for s in range(streams)
            )
        )
    finally:
        channel.close()
    elapsed = time.perf_counter() - started
    return {
        "count": ok,
        "errors": dict(errors),
        "elapsed_s": round(elapsed, 3),
        "rate": round(ok / elapsed, 1),
    }


async def get(spec: dict[str, Any]) -> dict[str, Any]:
    """``aggregates``: ``[[aggregate_id, label], ...]``, each read once, in order, after one
    unmeasured read of each aggregate id in ``warm`` (if given). With
    ``metrics_url``, also the server's own rehydration time of each read (the change of
    ``aggregate_rehydration_duration_seconds_sum`` around it: reads run one at a time)."""
    host, port, metadata = target(spec)
    metrics_url = spec.get("metrics_url")

    async def rehydration_seconds() -> float | None:
        if not metrics_url:
            return None
        status, text = await asyncio.to_thread(http_get, metrics_url)
        if status != 200:
            return None
        return metric_total(text, "aggregate_rehydration_duration_seconds_sum")

    channel = Channel(host, port)
    rows = []
    try:
        stub = CommandServiceStub(channel)
        for _ in range(2):  # connection, SQLite and NATS paths warm
            probe = pb.GetAggregateRequest(
                aggregate_type="bank-account", aggregate_id=str(uuid.uuid4())
            )
            try:
                await stub.GetAggregate(probe, metadata=metadata, timeout=CALL_TIMEOUT_S)
            except grpclib.exceptions.GRPCError as exc:
                if exc.status.name != "NOT_FOUND":
                    raise
        for aggregate_id in spec.get("warm", []):
            await stub.GetAggregate(
                pb.GetAggregateRequest(aggregate_type="bank-account", aggregate_id=aggregate_id),
                metadata=metadata,
                timeout=60,
            )
        for aggregate_id, label in spec["aggregates"]:
            before = await rehydration_seconds()
            started = time.perf_counter()
            view = await stub.GetAggregate(
                pb.GetAggregateRequest(aggregate_type="bank-account", aggregate_id=aggregate_id),
                metadata=metadata,
                timeout=60,
            )
            ms = (time.perf_counter() - started) * 1000
            after = await rehydration_seconds()
            row: dict[str, Any] = {
                "id": aggregate_id,
                "label": label,
                "ms": round(ms, 3),
                "version": view.version,
            }
            if before is not None and after is not None:
                row["server_ms"] = round((after - before) * 1000, 3)
            rows.append(row)
    finally:
        channel.close()
    return {"reads": rows}


WORKLOADS = {
    "unary": unary,
    "stream": stream,
    "open_loop": open_loop,
    "gateway": gateway,
    "batch": batch,
    "get": get,
}


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    workload = WORKLOADS[spec["kind"]]
    return await asyncio.wait_for(workload(spec), float(spec.get("timeout_s", 300)))


if __name__ == "__main__":
    spec = json.load(sys.stdin)
    if spec.get("nice"):
        os.nice(int(spec["nice"]))
    result = asyncio.run(main(spec))
    result["kind"] = spec["kind"]
    print("RESULT " + json.dumps(result), flush=True)
