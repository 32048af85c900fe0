"""The per-tenant admin views (``GET /admin/tenants``, ``GET /admin/tenant/{id}/status``).

A view joins what the node knows of a tenant, all of it kept up to date as commands run:
the gate's hosting state, the cache's count of the tenant's aggregates, and the activity
tracker's command count and last activity. ``page`` runs on the event loop that owns the
gate (the island) and costs a sort of the known tenant ids plus one view per tenant of the
page; snapshot counts come from the snapshot database afterwards (``with_snapshot_counts``),
off that loop.

Pages follow tenant id order (byte order of the ids, which are ASCII): a page holds the
tenants whose id sorts after ``after``, at most ``limit`` of them; ``next_after`` is the
last id of a full page when more tenants follow, else None. A tenant that appears or
leaves between two requests is simply in or out of the later page: no tenant is listed
twice in one walk, and one present for the whole walk is never skipped.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING, Protocol

from aggregate.application.admin import TenantListing, TenantStatusView

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aggregate.application.activity import TenantActivity
    from aggregate.application.admin import TenantPage
    from aggregate.application.gate import TenantGate, TenantStatus


class CachedCounts(Protocol):
    def tenant_count(self, tenant_id: str) -> int:
        """Aggregates of ``tenant_id`` in the cache."""
        ...


class ActivitySource(Protocol):
    def of(self, tenant_id: str) -> TenantActivity: ...


def tenant_view(status: TenantStatus, *, cached: int, activity: TenantActivity) -> TenantStatusView:
    """One tenant's view; ``aggregates_snapshotted`` is None until counted."""
    return {
        "tenant_id": status.tenant_id,
        "hosted": status.hosted,
        "accepting": status.accepting,
        "draining": status.draining,
        "in_flight": status.in_flight,
        "owner": status.owner,
        "aggregates_cached": cached,
        "aggregates_snapshotted": None,
        "commands_total": activity.commands_total,
        "last_activity": activity.last_activity,
    }


def status_view(
    gate: TenantGate, cache: CachedCounts, activity: ActivitySource, tenant_id: str
) -> TenantStatusView:
    """The view of one tenant, known here or not."""
    return tenant_view(
        gate.status(tenant_id),
        cached=cache.tenant_count(tenant_id),
        activity=activity.of(tenant_id),
    )


def page(
    gate: TenantGate, cache: CachedCounts, activity: ActivitySource, wanted: TenantPage
) -> TenantListing:
    """The page ``wanted`` of the tenants ``gate.tenants`` lists (module docstring)."""
    ids = gate.tenant_ids()
    start = bisect_right(ids, wanted.after) if wanted.after is not None else 0
    chosen = ids[start : start + wanted.limit]
    more = start + wanted.limit < len(ids)
    views = [status_view(gate, cache, activity, tenant) for tenant in chosen]
    return TenantListing(views, chosen[-1] if more and chosen else None)


def with_snapshot_counts(
    views: list[TenantStatusView], counts: Mapping[str, int] | None
) -> list[TenantStatusView]:
    """The views with ``aggregates_snapshotted`` filled from ``counts`` (a tenant without
    snapshots has none in it); ``counts`` None (unreadable database) leaves them None."""
    if counts is None:
        return views
    return [{**view, "aggregates_snapshotted": counts.get(view["tenant_id"], 0)} for view in views]
