"""The tenant gate and the placement controller, under asyncio and Trio (anyio)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aggregate.application.gate import TenantGate, TenantStatus
from aggregate.application.placement import PlacementChange, PlacementController
from aggregate.domain.errors import (
    InvalidArgumentError,
    TenantAccessDeniedError,
    TenantUnavailableError,
)
from aggregate.domain.placement import PlacementDecision, PlacementMap, validate_placement

pytestmark = pytest.mark.anyio

MAP = validate_placement({"acme": "shard-a", "globex": "shard-b"})
MOVED = validate_placement({"acme": "shard-b", "globex": "shard-b"})


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def gate_for(shard: str = "shard-a", placement: PlacementMap | None = MAP) -> TenantGate:
    return TenantGate(PlacementDecision(shard, placement))


class Held:
    """Commands held open inside ``gate.admit`` until released."""

    def __init__(self, gate: TenantGate, tg: anyio.abc.TaskGroup) -> None:
        self.gate = gate
        self.tg = tg
        self.release = anyio.Event()
        self.finished: list[str] = []

    async def start(self, tenant_id: str) -> None:
        entered = anyio.Event()

        async def command() -> None:
            with self.gate.admit(tenant_id):
                entered.set()
                await self.release.wait()
            self.finished.append(tenant_id)

        self.tg.start_soon(command)
        await entered.wait()


async def test_no_map_admits_every_tenant_and_counts_in_flight() -> None:
    gate = gate_for(placement=None)
    with gate.admit("anyone"), gate.admit("anyone"):
        assert gate.status("anyone").in_flight == 2
        assert gate.in_flight == 2
    assert gate.status("anyone") == TenantStatus("anyone", True, True, False, 0, None)


async def test_in_flight_is_released_when_the_command_fails() -> None:
    gate = gate_for()
    with pytest.raises(RuntimeError), gate.admit("acme"):
        raise RuntimeError("decide crashed")
    assert gate.status("acme").in_flight == 0


async def test_tenant_of_another_shard_is_unavailable_naming_its_owner() -> None:
    gate = gate_for()
    with pytest.raises(TenantUnavailableError) as caught:
        gate.admit("globex")
    assert caught.value.owner == "shard-b"
    assert "'shard-b' owns it" in caught.value.message
    assert gate.status("globex").as_dict() == {
        "tenant_id": "globex",
        "hosted": False,
        "accepting": False,
        "draining": False,
        "in_flight": 0,
        "owner": "shard-b",
    }


async def test_ring_placed_tenants_follow_the_map() -> None:
    a, b = gate_for("shard-a"), gate_for("shard-b")
    for tenant in [f"t{i}" for i in range(200)]:
        owner = MAP.owner_of(tenant)
        hosted_on_a = a.status(tenant).accepting
        assert hosted_on_a == (owner == "shard-a")
        assert b.status(tenant).accepting != hosted_on_a
        target = a if hosted_on_a else b
        with target.admit(tenant):
            pass


async def test_allowlist_denies_access() -> None:
    gate = TenantGate(PlacementDecision("shard-a").with_hosted_tenants(["acme"]))
    with gate.admit("acme"):
        pass
    with pytest.raises(TenantAccessDeniedError, match="allowlist"):
        gate.admit("initech")
    assert not gate.status("initech").hosted


async def test_drain_waits_for_in_flight_commands_then_refuses_until_accepted() -> None:
    gate = gate_for()
    results = []
    async with anyio.create_task_group() as tg:
        held = Held(gate, tg)
        await held.start("acme")
        await held.start("acme")

        async def drain() -> None:
            results.append(await gate.drain("acme", timeout=30))

        tg.start_soon(drain)
        await anyio.wait_all_tasks_blocked()
        assert results == []
        status = gate.status("acme")
        assert (status.accepting, status.draining, status.in_flight) == (False, True, 2)
        with pytest.raises(TenantUnavailableError, match="draining"):
            gate.admit("acme")
        held.release.set()
    assert held.finished == ["acme", "acme"]
    assert results[0].drained
    assert results[0].in_flight == 0
    assert gate.status("acme").draining
    with pytest.raises(TenantUnavailableError):
        gate.admit("acme")
    assert gate.accept("acme").accepting
    with gate.admit("acme"):
        pass


async def test_drain_timeout_reports_what_is_still_in_flight() -> None:
    gate = gate_for()
    async with anyio.create_task_group() as tg:
        held = Held(gate, tg)
        await held.start("acme")
        result = await gate.drain("acme", timeout=0.01)
        assert not result.drained
        assert result.in_flight == 1
        held.release.set()
    assert gate.status("acme").in_flight == 0


async def test_drain_of_an_idle_tenant_returns_at_once() -> None:
    gate = gate_for()
    with anyio.fail_after(5):
        result = await gate.drain("acme", timeout=3600)
    assert result.drained
    assert not gate.status("acme").accepting


async def test_apply_moves_a_tenant_away_and_waits_for_its_commands() -> None:
    gate = gate_for()
    results = []
    async with anyio.create_task_group() as tg:
        held = Held(gate, tg)
        await held.start("acme")
        diff = gate.apply(PlacementDecision("shard-a", MOVED))
        assert diff.left == ("acme",)
        assert diff.arrived == ()
        with pytest.raises(TenantUnavailableError) as caught:
            gate.admit("acme")
        assert caught.value.owner == "shard-b"
        status = gate.status("acme")
        assert (status.hosted, status.accepting, status.draining) == (False, False, True)

        async def wait() -> None:
            results.append(await gate.wait_idle("acme", timeout=30))

        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        assert results == []
        held.release.set()
    assert results[0].drained
    assert results[0].owner == "shard-b"
    assert gate.status("acme").draining is False
    assert gate.tenants() == []


async def test_a_tenant_brought_back_ends_its_drain_as_reopened() -> None:
    gate = gate_for()
    results = []
    async with anyio.create_task_group() as tg:
        held = Held(gate, tg)
        await held.start("acme")
        gate.apply(PlacementDecision("shard-a", MOVED))

        async def wait() -> None:
            results.append(await gate.wait_idle("acme", timeout=30))

        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        diff = gate.apply(PlacementDecision("shard-a", MAP))
        assert diff.arrived == ("acme",)
        with anyio.fail_after(5):
            while not results:
                await anyio.wait_all_tasks_blocked()
        assert results[0].reopened
        assert not results[0].drained
        with gate.admit("acme"):
            assert gate.status("acme").in_flight == 2
        held.release.set()


async def test_drain_all_closes_the_gate_and_waits() -> None:
    gate = gate_for(placement=None)
    results = []
    async with anyio.create_task_group() as tg:
        held = Held(gate, tg)
        await held.start("acme")
        await held.start("globex")

        async def drain_all() -> None:
            results.append(await gate.drain_all(timeout=30))

        tg.start_soon(drain_all)
        await anyio.wait_all_tasks_blocked()
        assert results == []
        with pytest.raises(TenantUnavailableError, match="shutting down"):
            gate.admit("initech")
        assert gate.status("acme").draining
        held.release.set()
    assert results[0].drained
    assert results[0].in_flight == {}
    assert gate.closed


async def test_drain_all_timeout_names_busy_tenants() -> None:
    gate = gate_for(placement=None)
    async with anyio.create_task_group() as tg:
        held = Held(gate, tg)
        await held.start("acme")
        result = await gate.drain_all(timeout=0.01)
        held.release.set()
    assert not result.drained
    assert result.in_flight == {"acme": 1}


async def test_tenants_lists_mapped_seen_and_draining() -> None:
    gate = gate_for()
    with gate.admit("tenant-3"):  # ring-placed on shard-a
        pass
    assert [s.tenant_id for s in gate.tenants()] == ["acme", "tenant-3"]
    assert all(s.accepting for s in gate.tenants())


# -- the placement controller ------------------------------------------------------------


async def test_controller_drains_tenants_that_leave() -> None:
    gate = gate_for()
    controller = PlacementController(gate, drain_timeout=30)
    changes: list[PlacementChange] = []
    async with anyio.create_task_group() as tg:
        held = Held(gate, tg)
        await held.start("acme")

        async def apply() -> None:
            changes.append(await controller.apply_placement(MOVED))

        tg.start_soon(apply)
        await anyio.wait_all_tasks_blocked()
        assert changes == []
        with pytest.raises(TenantUnavailableError):
            gate.admit("acme")
        held.release.set()
    change = changes[0]
    assert change.left == ("acme",)
    assert [d.drained for d in change.drains] == [True]
    assert change.as_dict()["placement"] == {"acme": "shard-b", "globex": "shard-b"}


async def test_controller_allowlist() -> None:
    gate = gate_for(placement=None)
    controller = PlacementController(gate)
    with gate.admit("initech"):
        pass
    change = await controller.set_hosted_tenants(["acme"])
    assert change.left == ("initech",)
    assert change.arrived == ()
    with pytest.raises(TenantAccessDeniedError):
        gate.admit("initech")
    with pytest.raises(InvalidArgumentError):
        await controller.set_hosted_tenants(["no way"])
    assert controller.decision.hosted_tenants == frozenset({"acme"})
    await controller.set_hosted_tenants(None)
    with gate.admit("initech"):
        pass


async def test_controller_run_applies_a_stream_of_maps() -> None:
    gate = gate_for("shard-b", placement=None)
    reported: list[PlacementChange] = []
    controller = PlacementController(gate, on_change=reported.append)
    send, receive = anyio.create_memory_object_stream[PlacementMap | None](10)
    async with anyio.create_task_group() as tg, send, receive:
        await send.send(MAP)
        started: Any = await tg.start(controller.run, receive)
        assert started == PlacementDecision("shard-b", MAP)
        assert not gate.status("acme").accepting
        await send.send(MOVED)
        with anyio.fail_after(5):
            await controller.wait_until(lambda: gate.status("acme").accepting)
        await send.send(None)
        with anyio.fail_after(5):
            await controller.wait_until(lambda: controller.decision.placement is None)
        assert gate.status("initech").accepting
        tg.cancel_scope.cancel()
    assert controller.applied == 3
    # The first map took "acme" away from this node (no map hosted everyone); the second
    # brought it back. Reports of changes with drains come when the drains end.
    assert sorted((c.arrived, c.left) for c in reported) == [
        ((), ()),
        ((), ("acme",)),
        (("acme",), ()),
    ]
