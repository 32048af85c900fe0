"""The measurements of one benchmark run, each a function over a running target.

``bench/run.py`` decides the order (baselines interleaved with the service, rounds); the
functions here run one measurement each and return plain JSON-ready dicts: the client's
result (rate, latency percentiles, errors) plus the server's CPU per command, split by
process role (``service`` = the Python process, ``nats`` = its nats-server child,
``workers`` = program worker processes; ``server`` for baseline (a)).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aggregate.adapters.nats_server import NatsServerProcess, free_port, terminate
from aggregate.config.values import default_event_loop
from aggregate.domain.ids import uuid7
from bench.procs import ROOT, CpuSample, ServiceProcess, cpu_seconds, rss_bytes, run_client

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

TENANT = "bench"
SNAPSHOT_FILES = ("snapshots.db", "snapshots.db-wal", "snapshots.db-shm")


@dataclass(frozen=True)
class Plan:
    """How long and how much; ``QUICK`` is the smoke mode."""

    rounds: int = 3
    window_s: float = 8.0
    short_s: float = 5.0
    open_loop_s: float = 6.0
    warmup_s: float = 1.0
    rates: tuple[int, ...] = (250, 500, 750, 1000)
    histories: tuple[int, ...] = (100, 1000, 10000)
    per_history: int = 3
    clients: int = 32
    streams: int = 2
    stream_window: int = 64
    raw_in_flight: int = 64
    memory_cache: int = 4000
    memory_total: int = 16000
    memory_batch: int = 2000
    memory_watch_buffer: int = 10_000
    open_loop_accounts: int = 1024
    process_isolation: bool = True
    process_open_loop: bool = True
    no_snapshot_cold: bool = True


QUICK = Plan(
    rounds=1,
    window_s=1.2,
    short_s=1.0,
    open_loop_s=1.2,
    warmup_s=0.3,
    histories=(100, 1000),
    per_history=1,
    memory_cache=300,
    memory_total=900,
    memory_batch=300,
    memory_watch_buffer=600,
    open_loop_accounts=256,
    process_open_loop=False,
    no_snapshot_cold=False,
)


@dataclass
class Accounts:
    """Opened bank accounts of one service storage, by use."""

    unary: list[str] = field(default_factory=list)
    hot: str = ""
    stream: list[str] = field(default_factory=list)
    open_loop: list[str] = field(default_factory=list)
    histories: list[tuple[str, str, int]] = field(default_factory=list)  # id, label, version

    def all(self) -> list[str]:
        return [*self.unary, self.hot, *self.stream, *self.open_loop]


def _per_command(start: CpuSample, end: CpuSample, count: int) -> dict[str, float]:
    return {role: round((end[role] - start[role]) / max(1, count) * 1e6, 1) for role in start}


def _client(module: str, spec: dict[str, Any], cpu: Callable[[], CpuSample]) -> dict[str, Any]:
    budget = float(spec.get("warmup_s", 1.0)) + float(spec.get("duration_s", 0)) + 120
    spec = {"timeout_s": budget - 30, **spec}
    result = run_client(module, spec, on_start=cpu, on_end=cpu, timeout=budget)
    start, end = result.pop("at_start", None), result.pop("at_end", None)
    if start is not None and end is not None:
        result["cpu_us_per_cmd"] = _per_command(start, end, int(result["count"]))
    return result


def _target(port: int, tenant: str = TENANT) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "tenant": tenant}


# ---- the service -----------------------------------------------------------------------
def batch(
    svc: ServiceProcess,
    command: str,
    targets: list[tuple[str, int]],
    streams: int = 4,
    tenant: str = TENANT,
) -> None:
    """Set-up commands (open accounts, fill histories), pipelined; every one must succeed.

    Raises:
        RuntimeError: a command failed.
    """
    if not targets:
        return
    expected = sum(n for _, n in targets)
    spec = {
        **_target(svc.grpc_port, tenant),
        "kind": "batch",
        "command": command,
        "targets": [list(t) for t in targets],
        "streams": streams,
        "timeout_s": 60 + expected / 50,  # slower than 50 commands/s is a failure anyway
    }
    result = run_client("bench.loadgen", spec, timeout=90 + expected / 50)
    if result["errors"] or result["count"] != expected:
        raise RuntimeError(f"set-up {command}: {result['count']}/{expected} ok, {result['errors']}")


def open_accounts(
    svc: ServiceProcess, plan: Plan, *, with_histories: bool, tenant: str = TENANT
) -> Accounts:
    """Open the accounts every workload uses; fill the history aggregates."""
    accounts = Accounts(
        unary=[str(uuid7()) for _ in range(plan.clients)],
        hot=str(uuid7()),
        stream=[str(uuid7()) for _ in range(plan.streams * plan.stream_window * 2)],
        open_loop=[str(uuid7()) for _ in range(plan.open_loop_accounts)],
    )
    if with_histories:
        for length in plan.histories:
            for _ in range(plan.per_history):
                accounts.histories.append((str(uuid7()), str(length), length + 1))
    opened = [(a, 1) for a in accounts.all() + [h[0] for h in accounts.histories]]
    batch(svc, "open", opened, tenant=tenant)
    filled = [(h[0], h[2] - 1) for h in accounts.histories]
    batch(svc, "deposit", filled, streams=16, tenant=tenant)
    return accounts


def warm(svc: ServiceProcess, accounts: Accounts, tenant: str = TENANT) -> None:
    """One deposit to every account: after a restart, every one is cached again."""
    batch(svc, "deposit", [(a, 1) for a in accounts.all()], tenant=tenant)


def service_unary(
    svc: ServiceProcess,
    plan: Plan,
    accounts: list[str],
    clients: int,
    duration_s: float,
    tenant: str = TENANT,
) -> dict[str, Any]:
    conflicts_before = svc.metric("aggregate_version_conflicts_total")
    spec = {
        **_target(svc.grpc_port, tenant),
        "kind": "unary",
        "clients": clients,
        "accounts": accounts,
        "warmup_s": plan.warmup_s,
        "duration_s": duration_s,
    }
    result = _client("bench.loadgen", spec, svc.cpu)
    result["conflicts"] = svc.metric("aggregate_version_conflicts_total") - conflicts_before
    return result


def service_stream(
    svc: ServiceProcess, plan: Plan, accounts: list[str], tenant: str = TENANT
) -> dict[str, Any]:
    spec = {
        **_target(svc.grpc_port, tenant),
        "kind": "stream",
        "streams": plan.streams,
        "window": plan.stream_window,
        "accounts": accounts,
        "warmup_s": plan.warmup_s,
        "duration_s": plan.window_s,
    }
    return _client("bench.loadgen", spec, svc.cpu)


def service_open_loop(
    svc: ServiceProcess, plan: Plan, accounts: list[str], rate: int
) -> dict[str, Any]:
    spec = {
        **_target(svc.grpc_port),
        "kind": "open_loop",
        "rate": rate,
        "accounts": accounts,
        "warmup_s": plan.warmup_s,
        "duration_s": plan.open_loop_s,
    }
    return _client("bench.loadgen", spec, svc.cpu)


def cold_reads(
    svc: ServiceProcess, histories: list[tuple[str, str, int]], warm_ids: list[str] | None = None
) -> list[dict[str, Any]]:
    """The first ``GetAggregate`` of each history aggregate after a (re)start, the lengths
    interleaved (100, 1000, 10000, 100, ...) so that no length gets the first read; before
    them, one read of each of ``warm_ids`` (not measured): the process's first rehydration
    (snapshot database, program, direct get) is paid there.

    Raises:
        RuntimeError: an aggregate came back at another version than it was filled to.
    """
    by_label: dict[str, list[tuple[str, str, int]]] = {}
    for history in histories:
        by_label.setdefault(history[1], []).append(history)
    ordered = [h for group in zip(*by_label.values(), strict=False) for h in group]
    ordered += [h for h in histories if h not in ordered]
    spec = {
        **_target(svc.grpc_port),
        "kind": "get",
        "warm": list(warm_ids or []),
        "aggregates": [[h[0], h[1]] for h in ordered],
        "metrics_url": svc.url("/metrics"),
        "timeout_s": 300,
    }
    reads: list[dict[str, Any]] = run_client("bench.loadgen", spec, timeout=360)["reads"]
    for read, (_, label, version) in zip(reads, ordered, strict=True):
        if read["version"] != version:
            raise RuntimeError(f"history {label}: version {read['version']}, expected {version}")
    return reads


def cold_reads_without_snapshots(
    svc: ServiceProcess, histories: list[tuple[str, str, int]], warm_ids: list[str] | None = None
) -> list[dict[str, Any]]:
    """Cold reads with the snapshot database moved away (full replay), then put back.
    ``svc`` must be stopped; it is stopped again on return."""
    aside = svc.storage.with_name(svc.storage.name + "-snapshots-aside")
    aside.mkdir(exist_ok=True)
    for name in SNAPSHOT_FILES:
        if (svc.storage / name).exists():
            shutil.move(svc.storage / name, aside / name)
    try:
        svc.start()
        try:
            return cold_reads(svc, histories, warm_ids)
        finally:
            svc.stop()
    finally:
        for name in SNAPSHOT_FILES:
            (svc.storage / name).unlink(missing_ok=True)
            if (aside / name).exists():
                shutil.move(aside / name, svc.storage / name)


def memory_series(svc: ServiceProcess, plan: Plan) -> dict[str, Any]:
    """RSS of a started service (``AGGREGATE_CACHE_SIZE`` = ``plan.memory_cache``) as new
    aggregates keep arriving, ``plan.memory_batch`` at a time, up to ``plan.memory_total``.

    Before the first point the service's other bounded memory is filled: the watch hub's
    resume buffer keeps the last ``plan.memory_watch_buffer`` changes (the service's
    default of ``AGGREGATE_WATCH_BUFFER_CHANGES``), so deposits on the first 200 accounts
    fill it; otherwise the series would show the buffer filling, not the cache. What the
    fill took is ``watch_buffer_rss``: (RSS before, RSS after)."""
    first = [str(uuid7()) for _ in range(200)]
    batch(svc, "open", [(a, 1) for a in first])  # steady-state allocations
    time.sleep(0.5)
    before = svc.rss()
    per_account = -(-plan.memory_watch_buffer // len(first))
    batch(svc, "deposit", [(a, per_account) for a in first], streams=16)
    time.sleep(0.5)
    points = [(0, svc.rss())]
    made = 0
    while made < plan.memory_total:
        batch(svc, "open", [(str(uuid7()), 1) for _ in range(plan.memory_batch)])
        made += plan.memory_batch
        time.sleep(0.5)
        points.append((made, svc.rss()))
    return {
        "cache_size": plan.memory_cache,
        "points": points,
        "watch_buffer_changes": plan.memory_watch_buffer,
        "watch_buffer_rss": (before, points[0][1]),
    }


# ---- baselines -------------------------------------------------------------------------
def service_event_loop(env: dict[str, str]) -> str:
    """The event loop a service started with ``env`` runs its command path on (its
    ``AGGREGATE_EVENT_LOOP``, else the service's default): the baselines run on the same."""
    chosen = env.get("AGGREGATE_EVENT_LOOP")
    return chosen.strip().lower() if chosen else str(default_event_loop())


class BareGrpcServer:
    """Baseline (a): ``python -m bench.baselines grpc-server`` on its own nats-server."""

    def __init__(self, workdir: Path, *, event_loop: str = "asyncio") -> None:
        self.nats = NatsServerProcess(store_dir=workdir / "baseline-a-nats", name="baseline-a")
        self.port = free_port()
        self.event_loop = event_loop
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.nats.start()
        self._proc = proc = subprocess.Popen(
            [sys.executable, "-m", "bench.baselines", "grpc-server"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        spec = {"nats_url": self.nats.url, "port": self.port, "event_loop": self.event_loop}
        proc.stdin.write(json.dumps(spec))
        proc.stdin.close()
        line = proc.stdout.readline()  # bounded: the process exits (EOF) if it cannot start
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"baseline (a) did not start: {line!r}")

    @property
    def pid(self) -> int:
        """The server process (its nats-server apart)."""
        if self._proc is None:
            raise RuntimeError("baseline (a) is not running")
        return self._proc.pid

    def cpu(self) -> CpuSample:
        assert self.nats.pid is not None
        return {"server": cpu_seconds(self.pid), "nats": cpu_seconds(self.nats.pid)}

    def unary(self, plan: Plan) -> dict[str, Any]:
        accounts = [str(uuid7()) for _ in range(plan.clients)]
        spec = {
            **_target(self.port),
            "kind": "unary",
            "clients": plan.clients,
            "accounts": accounts,
            "warmup_s": plan.warmup_s,
            "duration_s": plan.window_s,
        }
        return _client("bench.loadgen", spec, self.cpu)

    def open_loop(self, plan: Plan, rate: int) -> dict[str, Any]:
        """The same open-loop schedule as the service's: the latency ceiling at ``rate``."""
        spec = {
            **_target(self.port),
            "kind": "open_loop",
            "rate": rate,
            "accounts": [str(uuid7()) for _ in range(plan.open_loop_accounts)],
            "warmup_s": plan.warmup_s,
            "duration_s": plan.open_loop_s,
        }
        return _client("bench.loadgen", spec, self.cpu)

    def rss(self) -> int:
        return rss_bytes(self._proc.pid) if self._proc else 0

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc, 30)
        self.nats.stop()


class RawPublisher:
    """Baseline (b): nats-py conditional publishes, pipelined, on its own nats-server."""

    def __init__(self, workdir: Path, *, event_loop: str = "asyncio") -> None:
        self.nats = NatsServerProcess(store_dir=workdir / "baseline-b-nats", name="baseline-b")
        self.event_loop = event_loop

    def start(self) -> None:
        self.nats.start()

    def cpu(self) -> CpuSample:
        assert self.nats.pid is not None
        return {"nats": cpu_seconds(self.nats.pid)}

    def run(self, plan: Plan) -> dict[str, Any]:
        spec = {
            "nats_url": self.nats.url,
            "in_flight": plan.raw_in_flight,
            "event_loop": self.event_loop,
            "warmup_s": plan.warmup_s,
            "duration_s": plan.window_s,
        }
        return run_client_raw({"timeout_s": plan.window_s + 60, **spec}, self.cpu)

    def stop(self) -> None:
        self.nats.stop()


def run_client_raw(spec: dict[str, Any], cpu: Callable[[], CpuSample]) -> dict[str, Any]:
    """``python -m bench.baselines raw``: the same START/END/RESULT protocol."""
    budget = float(spec["timeout_s"]) + 30
    result = run_client(
        "bench.baselines", spec, on_start=cpu, on_end=cpu, timeout=budget, args=["raw"]
    )
    start, end = result.pop("at_start", None), result.pop("at_end", None)
    if start is not None and end is not None:
        result["cpu_us_per_cmd"] = _per_command(start, end, int(result["count"]))
        result["cpu_us_per_cmd"]["client"] = round(
            result["client_cpu_s"] / max(1, result["count"]) * 1e6, 1
        )
    return result
