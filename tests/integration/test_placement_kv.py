"""Placement from NATS KV, end to end with a real nats-server: the watcher, the controller
and the tenant gate (DESIGN §6)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import nats.errors
import pytest

from aggregate.adapters.nats_server import NatsServerProcess
from aggregate.adapters.placement_kv import DEFAULT_BUCKET, DEFAULT_KEY, PlacementWatcher
from aggregate.application.gate import TenantGate
from aggregate.application.placement import PlacementChange, PlacementController
from aggregate.domain.errors import TenantUnavailableError
from aggregate.domain.placement import (
    PlacementDecision,
    PlacementMap,
    parse_placement,
    validate_placement,
)

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

MAP = validate_placement({"acme": "shard-a", "globex": "shard-b"})
SWAPPED = validate_placement({"acme": "shard-b", "globex": "shard-a"})
WAIT = 30


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Node:
    """One aggregate node's placement machinery: watcher → controller → gate."""

    gate: TenantGate
    controller: PlacementController
    watcher: PlacementWatcher
    changes: list[PlacementChange] = field(default_factory=list)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(WAIT):
            await self.controller.wait_until(predicate)

    async def wait_for_placement(self, placement: PlacementMap | None) -> None:
        await self.wait_until(lambda: self.gate.decision.placement == placement)


@contextlib.asynccontextmanager
async def run_node(connect_nats: Any, url: str, shard: str, **options: Any) -> AsyncIterator[Node]:
    """Connect (telling the watcher about reconnects), start the controller on the
    watcher's updates, and return once it is caught up."""
    holder: list[PlacementWatcher] = []

    async def reconnected() -> None:
        holder[0].notify_reconnected()

    async with connect_nats(url, reconnected_cb=reconnected) as nc:
        watcher = PlacementWatcher(nc, request_timeout=2.0, **options)
        holder.append(watcher)
        gate = TenantGate(PlacementDecision(shard))
        changes: list[PlacementChange] = []
        controller = PlacementController(gate, drain_timeout=WAIT, on_change=changes.append)
        node = Node(gate, controller, watcher, changes)
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(WAIT):
                await tg.start(controller.run, watcher.updates())
            yield node
            tg.cancel_scope.cancel()


async def put(connect_nats: Any, url: str, placement: PlacementMap | None) -> int:
    """Write the placement key from a separate client, as an operator would; retried while
    a just-restarted server's JetStream is not answering yet."""
    with anyio.fail_after(WAIT):
        while True:
            try:
                async with connect_nats(url) as nc:
                    return await PlacementWatcher(nc, request_timeout=2.0).put_placement(placement)
            except (nats.errors.Error, TimeoutError, OSError):
                await anyio.sleep(0.1)  # retry backoff, not synchronisation


async def test_bucket_is_created_with_direct_get_and_a_map_is_applied(
    nats_server: NatsServerProcess, connect_nats: Any
) -> None:
    async with run_node(connect_nats, nats_server.url, "shard-a") as node:
        assert node.gate.decision.placement is None
        assert node.gate.status("globex").accepting
        async with connect_nats(nats_server.url) as nc:
            info = await nc.jetstream().stream_info(f"KV_{DEFAULT_BUCKET}")
            assert info.config.allow_direct
        await put(connect_nats, nats_server.url, MAP)
        await node.wait_for_placement(MAP)
        assert node.gate.status("acme").accepting
        with pytest.raises(TenantUnavailableError) as caught:
            node.gate.admit("globex")
        assert caught.value.owner == "shard-b"


async def test_an_existing_bucket_and_map_are_used_as_they_are(
    nats_server: NatsServerProcess, connect_nats: Any
) -> None:
    async with connect_nats(nats_server.url) as nc:
        from nats.js.api import KeyValueConfig

        kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=DEFAULT_BUCKET))
        await kv.put(DEFAULT_KEY, MAP.to_json().encode())
    async with run_node(connect_nats, nats_server.url, "shard-b") as node:
        # Caught up means the map was applied before ``start`` returned.
        assert node.gate.decision.placement == MAP
        assert node.gate.status("globex").accepting
        assert not node.gate.status("acme").accepting


async def test_a_moved_tenant_is_drained_and_an_arriving_one_admitted(
    nats_server: NatsServerProcess, connect_nats: Any
) -> None:
    async with run_node(connect_nats, nats_server.url, "shard-a") as node:
        await put(connect_nats, nats_server.url, MAP)
        await node.wait_for_placement(MAP)
        with pytest.raises(TenantUnavailableError):
            node.gate.admit("globex")
        finished: list[str] = []
        release, entered = anyio.Event(), anyio.Event()

        async def command_in_flight() -> None:
            with node.gate.admit("acme"):
                entered.set()
                await release.wait()
            finished.append("acme")

        async with anyio.create_task_group() as tg:
            tg.start_soon(command_in_flight)
            await entered.wait()
            await put(connect_nats, nats_server.url, SWAPPED)
            await node.wait_for_placement(SWAPPED)
            with pytest.raises(TenantUnavailableError) as caught:
                node.gate.admit("acme")
            assert caught.value.owner == "shard-b"
            assert "'shard-b' owns it" in caught.value.message
            status = node.gate.status("acme")
            assert (status.accepting, status.draining, status.in_flight) == (False, True, 1)
            with node.gate.admit("globex"):
                pass
            # The change is reported once its drain ends, and the drain waits for acme.
            assert [c.decision.placement for c in node.changes] == [None, MAP]
            release.set()
        await node.wait_until(lambda: len(node.changes) == 3)
        assert finished == ["acme"]
        change = node.changes[-1]
        assert (change.arrived, change.left) == (("globex",), ("acme",))
        assert [d.as_dict() for d in change.drains] == [
            {
                "tenant_id": "acme",
                "drained": True,
                "in_flight": 0,
                "reopened": False,
                "owner": "shard-b",
            }
        ]
        assert node.gate.status("acme").draining is False


async def test_invalid_values_are_ignored_and_the_last_good_map_kept(
    nats_server: NatsServerProcess, connect_nats: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aggregate.adapters.placement_kv")
    async with (
        connect_nats(nats_server.url) as nc,
        run_node(connect_nats, nats_server.url, "shard-a") as node,
    ):
        await put(connect_nats, nats_server.url, MAP)
        await node.wait_for_placement(MAP)
        kv = await PlacementWatcher(nc).ensure_bucket()
        bad_revisions = [
            await kv.put(DEFAULT_KEY, b"{not json"),
            await kv.put(DEFAULT_KEY, b'{"acme": "no spaces allowed"}'),
            await kv.put(DEFAULT_KEY, b"[]"),
        ]
        await put(connect_nats, nats_server.url, SWAPPED)
        await node.wait_for_placement(SWAPPED)
        await node.wait_until(lambda: len(node.changes) == 3)  # reported after acme's drain
        # Watch entries come in revision order: the bad ones were seen before SWAPPED, and
        # none of them changed the placement (no "no map, host everyone" in between).
        assert [c.decision.placement for c in node.changes] == [None, MAP, SWAPPED]
        logged = [r.getMessage() for r in caplog.records if "ignoring invalid" in r.getMessage()]
        assert len(logged) == 3
        for revision, message in zip(bad_revisions, logged, strict=True):
            assert f"revision {revision} " in message
        assert "'no spaces allowed'" in logged[1]
        await put(connect_nats, nats_server.url, None)
        await node.wait_for_placement(None)
        assert node.gate.status("globex").accepting


async def test_an_invalid_value_at_startup_means_no_map_until_a_good_one(
    nats_server: NatsServerProcess, connect_nats: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aggregate.adapters.placement_kv")
    async with connect_nats(nats_server.url) as nc:
        kv = await PlacementWatcher(nc).ensure_bucket()
        await kv.put(DEFAULT_KEY, b'{"acme": ["shard-a"]}')
    async with run_node(connect_nats, nats_server.url, "shard-b") as node:
        # There is no last good map to keep: the node behaves as with no map.
        assert node.gate.decision.placement is None
        assert any("ignoring invalid" in r.getMessage() for r in caplog.records)
        await put(connect_nats, nats_server.url, MAP)
        await node.wait_for_placement(MAP)


async def test_after_a_server_restart_the_watcher_rereads_and_converges(
    nats_server: NatsServerProcess, connect_nats: Any
) -> None:
    # No periodic resync: only the reconnect hook can bring the watcher back.
    async with run_node(connect_nats, nats_server.url, "shard-a", resync_interval=None) as node:
        await put(connect_nats, nats_server.url, MAP)
        await node.wait_for_placement(MAP)
        resyncs = node.watcher.resyncs
        await anyio.to_thread.run_sync(nats_server.restart)
        await put(connect_nats, nats_server.url, SWAPPED)
        await node.wait_for_placement(SWAPPED)
        assert node.watcher.resyncs > resyncs
        # And the fresh watch follows later changes again.
        await put(connect_nats, nats_server.url, MAP)
        await node.wait_for_placement(MAP)


async def test_a_server_that_comes_back_with_another_value_is_believed(
    nats_server: NatsServerProcess, connect_nats: Any, tmp_path: Path
) -> None:
    # The key "changed while the node was away": the server that comes back on the same
    # address holds another store, whose revisions start again at 1. Only an
    # authoritative re-read (not "newer revision wins") gets this right.
    other = NatsServerProcess(store_dir=tmp_path / "other", name="other")
    other.start()
    try:
        assert await put(connect_nats, other.url, SWAPPED) == 1
        other.stop()
        async with run_node(connect_nats, nats_server.url, "shard-a", resync_interval=None) as n:
            for placement in (MAP, SWAPPED, MAP):
                await put(connect_nats, nats_server.url, placement)
            await n.wait_for_placement(MAP)
            assert n.watcher.revision == 3
            await anyio.to_thread.run_sync(nats_server.stop)
            other.port = nats_server.port
            await anyio.to_thread.run_sync(other.start)
            await n.wait_for_placement(SWAPPED)
            assert n.watcher.revision == 1
    finally:
        other.stop()


async def test_two_shards_over_one_map_host_every_tenant_exactly_once(
    nats_server: NatsServerProcess, connect_nats: Any
) -> None:
    placement = validate_placement({"acme": "shard-a", "globex": "shard-b", "t-7": "shard-b"})
    async with (
        run_node(connect_nats, nats_server.url, "shard-a") as a,
        run_node(connect_nats, nats_server.url, "shard-b") as b,
    ):
        await put(connect_nats, nats_server.url, placement)
        await a.wait_for_placement(placement)
        await b.wait_for_placement(placement)
        tenants = ["acme", "globex", *(f"t-{i}" for i in range(500))]
        on_a = {t for t in tenants if a.gate.status(t).accepting}
        on_b = {t for t in tenants if b.gate.status(t).accepting}
        assert on_a.isdisjoint(on_b)
        assert on_a | on_b == set(tenants)
        assert "acme" in on_a
        assert {"globex", "t-7"} <= on_b
        assert len(on_a) > 100
        assert len(on_b) > 100
        for tenant in tenants[:50]:
            host, other = (a, b) if tenant in on_a else (b, a)
            with host.gate.admit(tenant):
                pass
            with pytest.raises(TenantUnavailableError) as caught:
                other.gate.admit(tenant)
            assert caught.value.owner == host.gate.decision.shard_id


async def test_concurrent_pins_are_conditional_and_none_is_lost(
    nats_server: NatsServerProcess, connect_nats: Any
) -> None:
    """Tenant moves pin tenants with a read-modify-write of the map; twenty at once must
    all land (each write is conditional on the revision it read, and retried)."""
    await put(connect_nats, nats_server.url, MAP)
    async with connect_nats(nats_server.url) as nc:
        watcher = PlacementWatcher(nc, request_timeout=2.0)

        async def pin(tenant: str) -> None:
            def change(current: PlacementMap | None) -> PlacementMap:
                assert current is not None
                return PlacementMap.of({**current.assignments, tenant: "shard-c"})

            await watcher.update_placement(change, attempts=25)

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(pin, f"t-{i}")
        kv = await watcher.ensure_bucket()
        stored = parse_placement((await kv.get(DEFAULT_KEY)).value or b"")
    assert dict(stored.assignments) == {
        **MAP.assignments,
        **{f"t-{i}": "shard-c" for i in range(20)},
    }
