"""``AdminBackend`` for the running service: admin requests become calls into the island,
where the tenant gate and the placement controller live."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from aggregate import __version__
from aggregate.application import tenant_views
from aggregate.application.admin import TenantListing
from aggregate.domain.errors import BackendUnavailableError
from aggregate.domain.placement import PlacementMap

if TYPE_CHECKING:
    from aggregate.adapters.snapshotter import Snapshotter
    from aggregate.adapters.sqlite_snapshots import SqliteSnapshotStore
    from aggregate.adapters.storage_probe import StorageProbe
    from aggregate.application.admin import (
        DrainReport,
        HealthReport,
        ReloadReport,
        StorageReport,
        TenantPage,
        TenantStatusView,
    )
    from aggregate.bridge import Island
    from aggregate.service.app import Service
    from aggregate.service.core import IslandCore

log = logging.getLogger(__name__)

VERSION = __version__


class IslandAdminBackend:
    """Implements ``aggregate.application.admin.AdminBackend``.

    ``snapshots`` gives the per-tenant snapshot counts, ``snapshotter`` the snapshot lag and
    ``storage`` the storage check of ``/health``; without them those read as unknown.
    """

    def __init__(
        self,
        service: Service,
        island: Island,
        core: IslandCore,
        *,
        snapshots: SqliteSnapshotStore | None = None,
        snapshotter: Snapshotter | None = None,
        storage: StorageProbe | None = None,
    ) -> None:
        self.service = service
        self.island = island
        self.core = core
        self.snapshots = snapshots
        self.snapshotter = snapshotter
        self.storage = storage

    def health(self) -> HealthReport:
        import time

        connected = self.core.connected
        storage = self._storage()
        state = self.service.state
        healthy = connected and storage["writable"] is not False
        status = "degraded" if state == "serving" and not healthy else state
        if status == "serving":
            status = "ok"
        handler = self.core.handler
        pending, lag = 0, 0.0
        if self.snapshotter is not None:
            stats = self.snapshotter.stats
            pending, lag = stats.pending, stats.lag_seconds
        report: HealthReport = {
            "status": status,
            "ready": self.service.ready(),
            "nats_connected": connected,
            "uptime_seconds": round(time.monotonic() - self.service.started_at, 3),
            "version": VERSION,
            "shard_id": self.service.settings.shard_id,
            "storage": storage,
            "active_aggregates": len(handler.cache) if handler is not None else 0,
            "snapshot_lag": pending,
            "snapshot_lag_seconds": round(lag, 3),
        }
        if self.core.indexer is not None:
            report["index"] = self.core.indexer.status()
        return report

    def _storage(self) -> StorageReport:
        if self.storage is None:
            return {
                "reachable": None,
                "writable": None,
                "last_error": None,
                "last_error_at": None,
                "checked_at": None,
            }
        return cast("StorageReport", self.storage.status.as_dict())

    def ready(self) -> bool:
        return self.service.ready()

    async def tenants(self, page: TenantPage) -> TenantListing:
        gate, handler = self.core.gate, self.core.handler
        assert gate is not None
        assert handler is not None
        listing = await self.island.call(
            tenant_views.page, gate, handler.cache, self.core.activity, page
        )
        views = await self._with_snapshot_counts(listing.tenants)
        return TenantListing(views, listing.next_after)

    async def tenant_status(self, tenant_id: str) -> TenantStatusView:
        gate, handler = self.core.gate, self.core.handler
        assert gate is not None
        assert handler is not None
        view = await self.island.call(
            tenant_views.status_view, gate, handler.cache, self.core.activity, tenant_id
        )
        (view,) = await self._with_snapshot_counts([view])
        return view

    async def _with_snapshot_counts(self, views: list[TenantStatusView]) -> list[TenantStatusView]:
        """Fill ``aggregates_snapshotted`` (left None when the database cannot be read)."""
        if self.snapshots is None or not views:
            return views
        try:
            counts = await self.snapshots.count_by_tenant([v["tenant_id"] for v in views])
        except BackendUnavailableError as exc:
            log.warning("snapshot counts not read: %s", exc.message)
            return views
        return tenant_views.with_snapshot_counts(views, counts)

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
