"""``AdminBackend`` for the running service: admin requests become calls into the island,
where the tenant gate and the placement controller live."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from aggregate import __version__
from aggregate.domain.placement import PlacementMap

if TYPE_CHECKING:
    from aggregate.application.admin import (
        DrainReport,
        HealthReport,
        ReloadReport,
        TenantStatusView,
    )
    from aggregate.bridge import Island
    from aggregate.service.app import Service
    from aggregate.service.core import IslandCore

VERSION = __version__


class IslandAdminBackend:
    """Implements ``aggregate.application.admin.AdminBackend``."""

    def __init__(self, service: Service, island: Island, core: IslandCore) -> None:
        self.service = service
        self.island = island
        self.core = core

    def health(self) -> HealthReport:
        import time

        connected = self.core.connected
        state = self.service.state
        status = "degraded" if state == "serving" and not connected else state
        if status == "serving":
            status = "ok"
        report: HealthReport = {
            "status": status,
            "ready": self.service.ready(),
            "nats_connected": connected,
            "uptime_seconds": round(time.monotonic() - self.service.started_at, 3),
            "version": VERSION,
            "shard_id": self.service.settings.shard_id,
        }
        if self.core.indexer is not None:
            report["index"] = self.core.indexer.status()
        return report

    def ready(self) -> bool:
        return self.service.ready()

    async def tenants(self) -> list[TenantStatusView]:
        gate = self.core.gate
        assert gate is not None
        statuses = await self.island.call(gate.tenants)
        return [cast("TenantStatusView", s.as_dict()) for s in statuses]

    async def tenant_status(self, tenant_id: str) -> TenantStatusView:
        gate = self.core.gate
        assert gate is not None
        status = await self.island.call(gate.status, tenant_id)
        return cast("TenantStatusView", status.as_dict())

    async def drain_tenant(self, tenant_id: str, timeout_s: float) -> DrainReport:
        gate = self.core.gate
        assert gate is not None
        result = await self.island.run(gate.drain, tenant_id, timeout_s)
        return cast("DrainReport", result.as_dict())

    async def reload(
        self, hosted_tenants: list[str] | None, placement: dict[str, str] | None
    ) -> ReloadReport:
        """Apply the new placement or allowlist, then end hand drains of the tenants it names
        for this node: naming a tenant in a reload is how an operator reopens it."""
        controller, gate = self.core.controller, self.core.gate
        assert controller is not None
        assert gate is not None
        change: Any
        if placement is not None:
            change = await self.island.run(controller.apply_placement, PlacementMap.of(placement))
            named = [t for t, shard in placement.items() if shard == gate.decision.shard_id]
        else:
            change = await self.island.run(controller.set_hosted_tenants, hosted_tenants)
            named = list(hosted_tenants or ())
        reopened = []
        for tenant in named:
            status = await self.island.call(gate.status, tenant)
            if status.draining and status.hosted:
                await self.island.call(gate.accept, tenant)
                reopened.append(tenant)
        arrived = sorted({*change.arrived, *reopened})
        return {"arrived": arrived, "left": list(change.left)}
