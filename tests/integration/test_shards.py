"""Many shards, end to end: two service processes over a 3-node JetStream cluster (R3
stream), the shard directory, UNAVAILABLE with the owner's address, online moves, failover
and failback, and a partitioned old owner that keeps writing (DESIGN §11)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import grpclib.client
import grpclib.exceptions
import pytest
from grpclib.const import Status

from aggregate.adapters.nats_server import free_port
from aggregate.client import CommandFailedError, ShardedClient
from aggregate.domain.placement import HashRing
from aggregate.gateway.v1 import aggregate_grpc
from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.service_harness import launch_service
from tests.integration.shards_harness import (
    SHARDS,
    TYPE,
    Account,
    Shard,
    Topology,
    Writers,
    verify,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from aggregate.adapters.nats_server import NatsCluster

pytestmark = pytest.mark.integration

RING = HashRing(SHARDS)
TENANTS = [f"t{i:02d}" for i in range(20)]


def ring_tenant(shard: str, skip: int = 0) -> str:
    return [t for t in TENANTS if RING.owner(t) == shard][skip]


@pytest.fixture
def topology(nats_cluster: NatsCluster, tmp_path: Path) -> Iterator[Topology]:
    topo = Topology(nats_cluster, tmp_path)
    try:
        topo.start_all()
        yield topo
    finally:
        topo.stop_all()


async def raw_submit(addr: str, tenant: str) -> tuple[Status, str, dict[str, Any]]:
    """One command over plain grpclib; the status, message and trailing metadata."""
    host, port = addr.rsplit(":", 1)
    channel = grpclib.client.Channel(host, int(port))
    try:
        stub = aggregate_grpc.CommandServiceStub(channel)
        request = pb.SubmitCommandRequest(
            command_id="0190b7a6-9a1e-7cc4-8d3a-7a2d5c6b1e01",
            aggregate_type=TYPE,
            aggregate_id="0190b7a6-9a1e-7cc4-8d3a-7a2d5c6b1e02",
            payload_json=json.dumps({"type": "OpenAccount", "owner": "ann"}),
        )
        call = stub.SubmitCommand.open(timeout=10, metadata={"x-tenant-id": tenant})
        try:
            async with call:
                await call.send_message(request, end=True)
                await call.recv_message()
                await call.recv_trailing_metadata()
        except grpclib.exceptions.GRPCError as exc:
            return exc.status, exc.message or "", dict(call.trailing_metadata or {})
        return Status.OK, "", dict(call.trailing_metadata or {})
    finally:
        channel.close()


def test_directory_lists_live_shards_and_unavailable_names_the_owner_address(
    topology: Topology,
) -> None:
    a, b = topology.shards["shard-a"], topology.shards["shard-b"]
    topology.wait_live("shard-a", set(SHARDS))
    status, entries = a.call("GET", "/admin/shards")
    assert status == 200
    by_id = {entry["shard_id"]: entry for entry in entries}
    assert by_id["shard-b"]["grpc_addr"] == b.grpc_addr
    assert by_id["shard-b"]["http_addr"] == f"127.0.0.1:{b.http_port}"

    tenant = ring_tenant("shard-b")
    code, message, trailers = asyncio.run(raw_submit(a.grpc_addr, tenant))
    assert code is Status.UNAVAILABLE
    assert "shard-b" in message
    # The address a client dials next must be shard-b's real gRPC address.
    assert trailers["x-owner-shard"] == "shard-b"
    assert trailers["x-owner-addr"] == b.grpc_addr

    async def follow() -> tuple[int, int]:
        async with ShardedClient([a.grpc_addr], tenant_id=tenant) as client:
            reply = await client.submit(
                TYPE,
                "0190b7a6-9a1e-7cc4-8d3a-7a2d5c6b1e03",
                {
                    "type": "OpenAccount",
                    "owner": "ann",
                },
            )
            return reply.version, client.stats.redirects

    version, redirects = asyncio.run(follow())
    assert (version, redirects) == (1, 1)


def test_a_move_and_a_shard_kill_lose_and_double_nothing(topology: Topology) -> None:
    """The CI-sized fault run: 8 writers over 20 tenants, 2 moves, 1 SIGKILL of a shard."""
    report = asyncio.run(fault_run(topology, moves=2, kill_shard=True, kill_leader=False))
    print("fault table:", json.dumps(report))
    assert report["verdict"]["lost"] == 0
    assert report["verdict"]["doubled"] == 0
    assert report["verdict"]["gaps"] == 0
    assert report["verdict"]["acked"] > 0
    assert all(move["moved"] for move in report["moves"])
    # Failover within TTL (2 s) + one refresh (0.2 s), with a generous margin for a busy
    # machine (the server expires entries on its own timer).
    assert report["failover"]["expired_after_s"] < 2.0 + 0.2 + 3.0


@pytest.mark.slow
def test_ten_moves_a_shard_kill_and_a_leader_kill_lose_and_double_nothing(
    topology: Topology,
) -> None:
    report = asyncio.run(fault_run(topology, moves=10, kill_shard=True, kill_leader=True))
    print("fault table:", json.dumps(report))
    assert report["verdict"]["lost"] == 0
    assert report["verdict"]["doubled"] == 0
    assert report["verdict"]["gaps"] == 0


async def fault_run(
    topology: Topology, *, moves: int, kill_shard: bool, kill_leader: bool
) -> dict[str, Any]:
    topology.wait_live("shard-a", set(SHARDS))
    writers = Writers(topology.seeds(), TENANTS)
    moved_tenant = ring_tenant("shard-a")
    report: dict[str, Any] = {"moves": [], "failover": None, "leader_kill": None}
    async with writers.running():
        await writers.wait_acked(100)
        for i in range(moves):
            to = "shard-b" if i % 2 == 0 else "shard-a"
            via = topology.shards["shard-a"]
            status, answer = await asyncio.to_thread(
                via.call, "POST", f"/admin/tenant/{moved_tenant}/move", {"to": to}
            )
            if status != 200 and via.process is not None:
                print(via.process.wait_for_log("admin request", timeout=5))
            assert status == 200, answer
            report["moves"].append(answer)
            await writers.wait_acked(50)
        if kill_leader:
            report["leader_kill"] = await kill_stream_leader(topology, writers)
        if kill_shard:
            victim = "shard-b"
            await asyncio.to_thread(topology.kill, victim)
            took = await asyncio.to_thread(topology.wait_live, "shard-a", {"shard-a"})
            await writers.wait_acked(100)
            await asyncio.to_thread(topology.start, victim)
            back = await asyncio.to_thread(topology.wait_live, "shard-a", set(SHARDS))
            await writers.wait_acked(100)
            report["failover"] = {
                "expired_after_s": round(took, 3),
                "back_after_s": round(back, 3),
            }
    stalls = [s for c in writers.clients for s in c.stats.unavailable_seconds]
    per_tenant: dict[str, float] = {}
    for client in writers.clients:
        longest = max(client.stats.unavailable_seconds, default=0.0) * 1000
        per_tenant[client.tenant_id] = round(max(per_tenant.get(client.tenant_id, 0), longest), 1)
    report["client_windows_ms"] = {
        "count": len(stalls),
        "max": round(max(stalls, default=0) * 1000, 1),
        "per_tenant_max": {t: ms for t, ms in sorted(per_tenant.items()) if ms},
    }
    report["failures"] = writers.failures[:5]
    verdict = await asyncio.to_thread(verify, topology.cluster, writers.accounts)
    report["verdict"] = verdict.as_dict()
    return report


async def kill_stream_leader(topology: Topology, writers: Writers) -> dict[str, Any]:
    import nats

    nc = await nats.connect(topology.cluster.urls)
    try:
        info = await nc.jetstream().stream_info("AGGREGATE_EVENTS")
        leader = info.cluster.leader if info.cluster else None
    finally:
        await nc.close()
    assert leader is not None
    node = topology.cluster.node_named(leader)
    node.kill()
    await writers.wait_acked(100)
    await asyncio.to_thread(node.restart)
    await writers.wait_acked(50)
    return {"killed": leader}


def test_sigterm_removes_the_entry_and_the_survivor_takes_the_ring_tenants(
    topology: Topology,
) -> None:
    a, b = topology.shards["shard-a"], topology.shards["shard-b"]
    topology.wait_live("shard-a", set(SHARDS))
    tenant = ring_tenant("shard-b", 1)
    code, _, trailers = asyncio.run(raw_submit(a.grpc_addr, tenant))
    assert (code, trailers.get("x-owner-shard")) == (Status.UNAVAILABLE, "shard-b")
    assert b.process is not None
    b.process.stop(signal.SIGTERM)
    b.process.wait_for_log("shard shard-b left the shard directory", timeout=1)
    topology.wait_live("shard-a", {"shard-a"})

    async def submit() -> int:
        async with ShardedClient([a.grpc_addr], tenant_id=tenant, timeout=20) as client:
            reply = await client.submit(
                TYPE, "0190b7a6-9a1e-7cc4-8d3a-7a2d5c6b1e04", {"type": "OpenAccount", "owner": "x"}
            )
            return reply.version

    assert asyncio.run(submit()) == 1  # shard-b is gone: only shard-a can have answered


def test_two_nodes_that_both_think_they_own_a_tenant_lose_and_double_nothing(
    topology: Topology, tmp_path: Path
) -> None:
    """A partitioned old owner that still writes: a second process claims shard-a too (so
    both host shard-a's tenants) and both write the same aggregates at once. The
    conditional append serialises them: every acknowledged command is stored once, and
    versions stay contiguous."""
    twin = Shard("shard-a", tmp_path / "twin", free_port(), free_port())
    topology.shards["twin"] = twin
    twin.process = launch_service(
        twin.storage,
        env=topology.environment(twin),
        grpc_port=twin.grpc_port,
        http_port=twin.http_port,
    )
    twin.process.wait_for_log("serving gRPC on")
    tenant = ring_tenant("shard-a")
    accounts = [Account(tenant, uuid.uuid4()) for _ in range(3)]

    async def write(addr: str, rounds: int) -> list[str]:
        refused: list[str] = []
        async with ShardedClient([addr], tenant_id=tenant, max_attempts=1) as client:
            for _ in range(rounds):
                for account in accounts:
                    payload = (
                        {"type": "Deposit", "amount": 1}
                        if account.acked
                        else {"type": "OpenAccount", "owner": "ann"}
                    )
                    command_id = str(uuid.uuid4())
                    try:
                        await client.submit(
                            TYPE, str(account.aggregate_id), payload, command_id=command_id
                        )
                    except CommandFailedError as exc:
                        refused.append(exc.status)
                        continue
                    account.acked.append(command_id)
        return refused

    async def both() -> list[list[str]]:
        a = topology.shards["shard-a"]
        return list(await asyncio.gather(write(a.grpc_addr, 40), write(twin.grpc_addr, 40)))

    refusals = asyncio.run(both())
    verdict = verify(topology.cluster, accounts)
    assert verdict.acked > 0
    assert (verdict.lost, verdict.doubled, verdict.gaps) == (0, 0, 0), verdict
    # Only the conflicts of the race itself may refuse a command, never a lost write.
    assert set(refusals[0] + refusals[1]) <= {"ABORTED", "FAILED_PRECONDITION"}
    assert verdict.stored == verdict.acked


def test_the_cli_lists_shards_routes_a_tenant_and_moves_it(topology: Topology) -> None:
    a, b = topology.shards["shard-a"], topology.shards["shard-b"]
    topology.wait_live("shard-a", set(SHARDS))
    nats_url = ",".join(topology.cluster.urls)

    def cli(*argv: str) -> tuple[int, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "aggregate.cli", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("AGGREGATE_")},
            check=False,
        )
        return done.returncode, json.loads(done.stdout) if done.stdout.strip() else done.stderr

    code, shards = cli("shards", "--nats-url", nats_url)
    assert code == 0
    assert [(s["shard_id"], s["grpc_addr"]) for s in shards] == [
        ("shard-a", a.grpc_addr),
        ("shard-b", b.grpc_addr),
    ]
    tenant = ring_tenant("shard-a", 2)
    code, route = cli("route", tenant, "--nats-url", nats_url)
    assert (code, route["owner"], route["grpc_addr"], route["pinned"]) == (
        0,
        "shard-a",
        a.grpc_addr,
        False,
    )
    code, moved = cli(
        "tenant", "move", tenant, "--to", "shard-b", "--http-addr", f"127.0.0.1:{a.http_port}"
    )
    assert code == 0, moved
    assert (moved["from"], moved["to"], moved["moved"]) == ("shard-a", "shard-b", True)
    assert moved["window_ms"] > 0
    code, route = cli("route", tenant, "--nats-url", nats_url)
    assert (route["owner"], route["grpc_addr"], route["pinned"]) == ("shard-b", b.grpc_addr, True)
    code, refused = cli(
        "tenant", "move", tenant, "--to", "shard-z", "--http-addr", f"127.0.0.1:{b.http_port}"
    )
    assert code == 1
    assert "shard 'shard-z' is not in the shard directory" in refused
