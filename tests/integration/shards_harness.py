"""Many shards in tests: two service processes over one 3-node JetStream cluster, the same
topology as compose.yml, and writers that follow tenants with ``aggregate.client``.

``Topology`` starts (and restarts) the shard processes; ``Writers`` runs writers over
tenants until told to stop, recording every acknowledged command; ``verify`` reads every
aggregate back from JetStream and counts what was lost, doubled or out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aggregate.adapters.jetstream.reader import read_events
from aggregate.adapters.nats_server import free_port
from aggregate.client import CommandFailedError, ShardedClient
from aggregate.domain.ids import AggregateKey
from tests.integration.service_harness import ServiceProcess, launch_service

if TYPE_CHECKING:
    from pathlib import Path

    from aggregate.adapters.nats_server import NatsCluster

TYPE = "bank-account"
STREAM = "AGGREGATE_EVENTS"
SHARDS = ("shard-a", "shard-b")
# Short directory periods keep failover inside a CI budget: TTL 2 s, refresh 0.2 s.
FAST_DIRECTORY = {
    "AGGREGATE_SHARD_TTL_MS": "2000",
    "AGGREGATE_SHARD_HEARTBEAT_MS": "300",
    "AGGREGATE_SHARD_REFRESH_MS": "200",
}


@dataclass
class Shard:
    shard_id: str
    storage: Path
    grpc_port: int
    http_port: int
    process: ServiceProcess | None = None

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self.process is not None
        return self.process.http_call(method, path, body)


@dataclass
class Topology:
    """Two shards (``shard-a``, ``shard-b``) over a NATS cluster with an R3 stream."""

    cluster: NatsCluster
    base: Path
    env: dict[str, str] = field(default_factory=dict)
    shards: dict[str, Shard] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for shard_id in SHARDS:
            self.shards[shard_id] = Shard(shard_id, self.base / shard_id, free_port(), free_port())

    def environment(self, shard: Shard) -> dict[str, str]:
        return {
            "AGGREGATE_NATS_URL": ",".join(self.cluster.urls),
            "AGGREGATE_STREAM_REPLICAS": "3",
            "AGGREGATE_SHARD_ID": shard.shard_id,
            **FAST_DIRECTORY,
            **self.env,
        }

    def start(self, shard_id: str) -> Shard:
        shard = self.shards[shard_id]
        shard.process = launch_service(
            shard.storage,
            env=self.environment(shard),
            grpc_port=shard.grpc_port,
            http_port=shard.http_port,
        )
        try:
            shard.process.wait_for_log("joined the shard directory")
            shard.process.wait_for_log("serving gRPC on")
        except BaseException:
            shard.process.stop(signal.SIGKILL)
            raise
        return shard

    def start_all(self) -> None:
        for shard_id in SHARDS:
            self.start(shard_id)

    def kill(self, shard_id: str) -> None:
        shard = self.shards[shard_id]
        assert shard.process is not None
        shard.process.stop(signal.SIGKILL)

    def stop_all(self) -> None:
        for shard in self.shards.values():
            if shard.process is not None and shard.process.proc.poll() is None:
                try:
                    shard.process.stop(signal.SIGTERM, timeout=30)
                except subprocess.TimeoutExpired:
                    shard.process.stop(signal.SIGKILL)

    def seeds(self) -> list[str]:
        return [shard.grpc_addr for shard in self.shards.values()]

    def wait_live(self, via: str, wanted: set[str], timeout: float = 30.0) -> float:
        """Poll ``GET /admin/shards`` on ``via`` until the live set is ``wanted``; returns
        the seconds it took."""
        started = time.monotonic()
        while True:
            status, body = self.shards[via].call("GET", "/admin/shards")
            if status == 200 and {entry["shard_id"] for entry in body} == wanted:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"live shards on {via} stayed {body!r}, not {sorted(wanted)}")
            time.sleep(0.05)  # polling an HTTP endpoint, not standing in for an event


@dataclass
class Account:
    tenant_id: str
    aggregate_id: uuid.UUID
    acked: list[str] = field(default_factory=list)
    """Command ids the service acknowledged, in order."""
    duplicates: int = 0
    """Acknowledgements that said ``duplicate`` (a retry of an applied command)."""


@dataclass
class Writers:
    """``count`` writers over ``tenants``; writer ``w`` owns one account in every tenant
    ``t`` with ``t % count == w`` (each tenant is written by one writer)."""

    seeds: list[str]
    tenants: list[str]
    count: int = 8
    accounts: list[Account] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    clients: list[ShardedClient] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _writer(self, index: int) -> None:
        mine = [t for i, t in enumerate(self.tenants) if i % self.count == index]
        accounts = [Account(t, uuid.uuid4()) for t in mine]
        self.accounts.extend(accounts)
        clients = {t: ShardedClient(self.seeds, tenant_id=t, timeout=60.0) for t in mine}
        self.clients.extend(clients.values())
        try:
            while not self._stop.is_set():
                for account in accounts:
                    payload = (
                        {"type": "Deposit", "amount": 1}
                        if account.acked
                        else {"type": "OpenAccount", "owner": "ann"}
                    )
                    command_id = str(uuid.uuid4())
                    try:
                        reply = await clients[account.tenant_id].submit(
                            TYPE, str(account.aggregate_id), payload, command_id=command_id
                        )
                    except CommandFailedError as exc:
                        self.failures.append(f"{account.tenant_id}: {exc}")
                        continue
                    account.acked.append(command_id)
                    account.duplicates += reply.duplicate
        finally:
            for client in clients.values():
                client.close()

    @contextlib.asynccontextmanager
    async def running(self) -> Any:
        tasks = [asyncio.create_task(self._writer(i)) for i in range(self.count)]
        try:
            yield self
        finally:
            self._stop.set()
            await asyncio.gather(*tasks)

    def acked(self) -> int:
        return sum(len(a.acked) for a in self.accounts)

    async def wait_acked(self, more: int, within: float = 60.0) -> None:
        """Wait until ``more`` further commands are acknowledged (progress, not time)."""
        target = self.acked() + more
        deadline = time.monotonic() + within
        while self.acked() < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"writers stalled at {self.acked()} acks: {self.failures[-3:]}")
            await asyncio.sleep(0.02)


@dataclass
class Verdict:
    acked: int
    stored: int
    lost: int
    doubled: int
    gaps: int

    def as_dict(self) -> dict[str, int]:
        return {
            "acked": self.acked,
            "stored": self.stored,
            "lost": self.lost,
            "doubled": self.doubled,
            "gaps": self.gaps,
        }


def verify(cluster: NatsCluster, accounts: list[Account]) -> Verdict:
    """Read every account's events from JetStream: each acknowledged command must be
    stored exactly once, versions must run 1, 2, 3 ... without a gap."""
    acked = stored = lost = doubled = gaps = 0
    for account in accounts:
        key = AggregateKey(account.tenant_id, TYPE, account.aggregate_id)
        events = read_events(cluster.urls, STREAM, key, timeout=30) if account.acked else []
        ids = [event["command_id"] for event in events]
        stored += len(events)
        acked += len(account.acked)
        lost += sum(1 for command_id in account.acked if command_id not in ids)
        doubled += len(ids) - len(set(ids))
        versions = [event["version"] for event in events]
        gaps += sum(1 for i, v in enumerate(versions, start=1) if v != i)
    return Verdict(acked, stored, lost, doubled, gaps)
