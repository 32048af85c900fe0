"""The placement controller: applies placement maps and allowlists to the tenant gate.

DESIGN §6. Maps come from the KV watcher (``aggregate.adapters.placement_kv``) or by hand
from ``POST /admin/reload``; each one takes effect at once (tenants that leave this node stop
being admitted, tenants that arrive are admitted) and then the tenants that left are drained:
their in-flight commands are given ``drain_timeout`` seconds to finish. The last map applied
wins, whichever source it came from.

anyio only; runs on the event loop that owns the gate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from aggregate.domain.placement import PlacementDecision

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Callable, Iterable

    from anyio.abc import TaskStatus

    from aggregate.application.gate import DrainResult, TenantGate
    from aggregate.domain.placement import PlacementMap

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class PlacementChange:
    """What applying a decision changed on this node.

    ``arrived``/``left`` cover the tenants the old or new decision names and those the gate
    has seen (ring-placed tenants never seen here are not listed). ``drains`` holds one
    result per tenant that left with commands in flight.
    """

    decision: PlacementDecision
    arrived: tuple[str, ...]
    left: tuple[str, ...]
    drains: tuple[DrainResult, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        placement = self.decision.placement
        hosted = self.decision.hosted_tenants
        return {
            "shard_id": self.decision.shard_id,
            "placement": dict(placement.assignments) if placement is not None else None,
            "hosted_tenants": sorted(hosted) if hosted is not None else None,
            "arrived": list(self.arrived),
            "left": list(self.left),
            "drains": [drain.as_dict() for drain in self.drains],
        }


class PlacementController:
    """Applies placement maps and hosted-tenant allowlists to a ``TenantGate``.

    This node's shard id is the gate's (``gate.decision.shard_id``). ``on_change`` is called
    with every change once its drains are over (metrics, admin); it must not block.
    """

    def __init__(
        self,
        gate: TenantGate,
        *,
        drain_timeout: float = 10.0,
        on_change: Callable[[PlacementChange], None] | None = None,
    ) -> None:
        self._gate = gate
        self._drain_timeout = drain_timeout
        self._on_change = on_change
        self._changed: anyio.Event | None = None
        self._applied = 0

    @property
    def gate(self) -> TenantGate:
        return self._gate

    @property
    def shard_id(self) -> str:
        return self._gate.decision.shard_id

    @property
    def decision(self) -> PlacementDecision:
        return self._gate.decision

    @property
    def applied(self) -> int:
        """How many decisions were applied so far."""
        return self._applied

    async def apply_placement(self, placement: PlacementMap | None) -> PlacementChange:
        """Apply a placement map (None: no map, host every tenant) and drain the tenants
        that left; returns when every drain is over (drained, timed out, or reopened).

        Cancellation: the map stays applied; only the waiting for drains stops.
        """
        return await self._drain(self._apply(self._gate.decision.with_placement(placement)))

    async def set_hosted_tenants(self, tenants: Iterable[str] | None) -> PlacementChange:
        """Set this node's hosted-tenant allowlist (None: allow all) and drain the tenants
        it excludes, like ``apply_placement``.

        Raises:
            InvalidArgumentError: a tenant id is invalid (nothing is changed).

        Cancellation: the allowlist stays applied; only the waiting for drains stops.
        """
        return await self._drain(self._apply(self._gate.decision.with_hosted_tenants(tenants)))

    async def run(
        self,
        updates: AsyncIterable[PlacementMap | None],
        *,
        task_status: TaskStatus[PlacementDecision] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Apply every map from ``updates`` as it comes; each is applied at once and the
        drains it causes run in the background, so a slow drain never delays a later map.

        Reports ``task_status.started(decision)`` once the first map (the watcher's first
        read: a map, or None when there is none) is applied: the node is caught up. Returns
        when ``updates`` ends.

        Cancellation: stops applying maps and abandons drains in progress (the gate keeps
        the last decision; tenants that left stay closed).
        """
        await self._follow(updates, PlacementDecision.with_placement, task_status)

    async def follow_live_shards(
        self,
        updates: AsyncIterable[frozenset[str]],
        *,
        task_status: TaskStatus[PlacementDecision] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Like ``run``, for the shard directory: every set of live shards from ``updates``
        becomes the ring that places the tenants absent from the map (failover when a
        shard's entry expires, failback when it returns).

        Cancellation: as ``run``.
        """
        await self._follow(updates, PlacementDecision.with_live_shards, task_status)

    async def _follow(
        self,
        updates: AsyncIterable[_T],
        step: Callable[[PlacementDecision, _T], PlacementDecision],
        task_status: TaskStatus[PlacementDecision],
    ) -> None:
        started = False
        async with anyio.create_task_group() as tg:
            async for update in updates:
                change = self._apply(step(self._gate.decision, update))
                if change.left:
                    tg.start_soon(self._drain, change)
                else:
                    self._report(change)
                if not started:
                    started = True
                    task_status.started(change.decision)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, re-checking after every applied decision and
        every finished drain (bound it with ``anyio.fail_after``).

        Cancellation: just stops waiting.
        """
        while not predicate():
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _apply(self, decision: PlacementDecision) -> PlacementChange:
        diff = self._gate.apply(decision)
        self._applied += 1
        self._notify()
        return PlacementChange(decision, diff.arrived, diff.left)

    async def _drain(self, change: PlacementChange) -> PlacementChange:
        results: list[DrainResult] = []

        async def wait_one(tenant_id: str) -> None:
            results.append(await self._gate.wait_idle(tenant_id, self._drain_timeout))

        busy = [t for t in change.left if self._gate.status(t).in_flight > 0]
        if busy:
            async with anyio.create_task_group() as tg:
                for tenant_id in busy:
                    tg.start_soon(wait_one, tenant_id)
        results.sort(key=lambda result: result.tenant_id)
        finished = PlacementChange(change.decision, change.arrived, change.left, tuple(results))
        self._report(finished)
        self._notify()
        return finished

    def _report(self, change: PlacementChange) -> None:
        if change.arrived or change.left:
            logger.info(
                "placement applied on shard %s: %d tenant(s) arrived %s, %d left %s",
                change.decision.shard_id,
                len(change.arrived),
                list(change.arrived[:20]),
                len(change.left),
                list(change.left[:20]),
            )
        for drain in change.drains:
            if not drain.drained and not drain.reopened:
                logger.warning(
                    "tenant %s left shard %s but %d command(s) were still in flight after "
                    "the %.1fs drain timeout",
                    drain.tenant_id,
                    change.decision.shard_id,
                    drain.in_flight,
                    self._drain_timeout,
                )
        if self._on_change is not None:
            self._on_change(change)
