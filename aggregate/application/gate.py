"""The tenant gate: which tenants this node admits commands for, and tenant drains.

DESIGN §3 "Tenant drain" and §6. Every command passes ``with gate.admit(tenant_id):``; the
gate counts it in flight while the block runs. A tenant is admitted when the current
``PlacementDecision`` hosts it, it is not being drained by hand and the node is not shutting
down. Placement changes (``apply``) take effect at once for new commands; commands already
in flight finish, and ``wait_idle``/``drain`` wait for them with a timeout.

The gate belongs to one event loop (the asyncio island in the service, a Trio loop in
tests): it is not thread-safe, and it uses only anyio, so it runs under either. ``admit``
is on the command hot path: a dict lookup and a flag check for a tenant seen before.

The drains take a ``timeout`` argument (not a caller's cancel scope) because on timeout
they report how many commands are still in flight rather than raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from aggregate.domain.errors import TenantAccessDeniedError, TenantUnavailableError
from aggregate.domain.placement import Hosting, PlacementDecision

if TYPE_CHECKING:
    from types import TracebackType

    from aggregate.application import ports


@dataclass(frozen=True, slots=True)
class TenantStatus:
    """One tenant as the admin API shows it (``GET /admin/tenant/{id}/status``).

    ``draining`` is true while a hand drain is in force (until ``accept``), or while a
    tenant that left this node still has commands in flight.
    """

    tenant_id: str
    hosted: bool
    accepting: bool
    draining: bool
    in_flight: int
    owner: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "hosted": self.hosted,
            "accepting": self.accepting,
            "draining": self.draining,
            "in_flight": self.in_flight,
            "owner": self.owner,
        }


@dataclass(frozen=True, slots=True)
class DrainResult:
    """How a tenant drain ended: ``drained`` (nothing in flight), timed out with
    ``in_flight`` commands still running, or ``reopened`` (the tenant was accepted again
    before it emptied, so the drain no longer applies)."""

    tenant_id: str
    drained: bool
    in_flight: int
    reopened: bool = False
    owner: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "drained": self.drained,
            "in_flight": self.in_flight,
            "reopened": self.reopened,
            "owner": self.owner,
        }


@dataclass(frozen=True, slots=True)
class DrainAllResult:
    """How ``drain_all`` ended: ``in_flight`` lists tenants with commands still running."""

    drained: bool
    in_flight: dict[str, int]


@dataclass(frozen=True, slots=True)
class PlacementDiff:
    """Tenants whose hosting changed when a decision was applied (among tenants the old or
    new decision names, and tenants the gate has seen)."""

    arrived: tuple[str, ...]
    left: tuple[str, ...]


class _Tenant:
    """Per-tenant state; also the context manager ``admit`` returns."""

    __slots__ = ("draining", "gate", "hosting", "idle", "in_flight", "open", "tenant_id")

    def __init__(self, gate: TenantGate, tenant_id: str) -> None:
        self.gate = gate
        self.tenant_id = tenant_id
        self.in_flight = 0
        self.draining = False
        self.hosting = Hosting.HOSTED
        self.open = False
        self.idle: anyio.Event | None = None

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.in_flight -= 1
        self.gate._total_in_flight -= 1
        if self.in_flight == 0 and self.idle is not None:
            self.idle.set()
            self.idle = None
        if self.gate._total_in_flight == 0 and self.gate._all_idle is not None:
            self.gate._all_idle.set()
            self.gate._all_idle = None


class TenantGate:
    """Admission of commands per tenant (implements ``ports.TenantGate``).

    ``decision`` says which tenants this node hosts; ``apply`` replaces it. Not thread-safe:
    call it from the event loop that owns it.
    """

    def __init__(self, decision: PlacementDecision) -> None:
        self._decision = decision
        self._tenants: dict[str, _Tenant] = {}
        self._total_in_flight = 0
        self._all_idle: anyio.Event | None = None
        self._closed = False

    @property
    def decision(self) -> PlacementDecision:
        return self._decision

    @property
    def closed(self) -> bool:
        """True once ``drain_all`` was called: nothing is admitted any more."""
        return self._closed

    @property
    def in_flight(self) -> int:
        """Commands in flight over all tenants."""
        return self._total_in_flight

    def admit(self, tenant_id: str) -> _Tenant:
        """Count one command in flight for ``tenant_id``; use as ``with gate.admit(t):``.

        Raises:
            TenantUnavailableError: the tenant is hosted by another shard (``owner`` names
                it), is being drained, or the node is shutting down.
            TenantAccessDeniedError: the node's hosted-tenant allowlist excludes it.
        """
        tenant = self._tenants.get(tenant_id)
        if tenant is None or not tenant.open:
            tenant = self._refuse_or_track(tenant_id, tenant)
        tenant.in_flight += 1
        self._total_in_flight += 1
        return tenant

    def _refuse_or_track(self, tenant_id: str, tenant: _Tenant | None) -> _Tenant:
        hosting = tenant.hosting if tenant is not None else self._decision.hosting(tenant_id)
        shard = self._decision.shard_id
        if hosting is Hosting.ELSEWHERE:
            owner = self._decision.owner_of(tenant_id)
            raise TenantUnavailableError(
                f"tenant {tenant_id!r} is not hosted on shard {shard!r}: "
                f"shard {owner!r} owns it; send its commands there",
                owner=owner,
            )
        if hosting is Hosting.NOT_ALLOWED:
            raise TenantAccessDeniedError(
                f"tenant {tenant_id!r} is not allowed on shard {shard!r} "
                "(not in its hosted-tenant allowlist)"
            )
        if self._closed:
            raise TenantUnavailableError(
                f"shard {shard!r} is shutting down and admits no commands; retry on another node"
            )
        if tenant is None:
            tenant = self._tenants[tenant_id] = _Tenant(self, tenant_id)
            tenant.hosting = hosting
        elif tenant.draining:
            raise TenantUnavailableError(
                f"tenant {tenant_id!r} is draining on shard {shard!r}; retry shortly"
            )
        tenant.open = True
        return tenant

    def _refresh(self, tenant: _Tenant) -> None:
        tenant.hosting = self._decision.hosting(tenant.tenant_id)
        tenant.open = tenant.hosting is Hosting.HOSTED and not tenant.draining and not self._closed

    def _wake(self, tenant: _Tenant) -> None:
        if tenant.idle is not None:
            tenant.idle.set()
            tenant.idle = None

    def apply(self, decision: PlacementDecision) -> PlacementDiff:
        """Replace the placement decision; it takes effect for the next ``admit``.

        Tenants that leave stop being admitted at once; their in-flight commands go on
        (wait for them with ``wait_idle``). Returns which known tenants arrived and left.
        """
        old = self._decision
        self._decision = decision
        candidates = old.named_tenants() | decision.named_tenants() | self._tenants.keys()
        arrived: list[str] = []
        left: list[str] = []
        for tenant_id in sorted(candidates):
            was, now = old.hosts(tenant_id), decision.hosts(tenant_id)
            if was and not now:
                left.append(tenant_id)
            elif now and not was:
                arrived.append(tenant_id)
        for tenant_id, tenant in list(self._tenants.items()):
            self._refresh(tenant)
            if tenant.open:
                self._wake(tenant)
            elif tenant.in_flight == 0 and not tenant.draining:
                del self._tenants[tenant_id]
        return PlacementDiff(tuple(arrived), tuple(left))

    def accept(self, tenant_id: str) -> TenantStatus:
        """End a hand drain of ``tenant_id``: it is admitted again if the placement hosts
        it (placement stays the authority; ``accepting`` in the answer says the outcome)."""
        tenant = self._tenants.get(tenant_id)
        if tenant is not None:
            tenant.draining = False
            self._refresh(tenant)
            self._wake(tenant)
        return self.status(tenant_id)

    def status(self, tenant_id: str) -> TenantStatus:
        """The tenant's hosted / accepting / draining / in-flight state."""
        tenant = self._tenants.get(tenant_id)
        hosted = self._decision.hosts(tenant_id)
        in_flight = tenant.in_flight if tenant is not None else 0
        hand_drain = tenant is not None and tenant.draining
        return TenantStatus(
            tenant_id=tenant_id,
            hosted=hosted,
            accepting=hosted and not hand_drain and not self._closed,
            draining=hand_drain or (in_flight > 0 and (not hosted or self._closed)),
            in_flight=in_flight,
            owner=self._decision.owner_of(tenant_id),
        )

    def tenants(self) -> list[TenantStatus]:
        """Status of every tenant this node knows: mapped to or allowed on this shard, or
        seen here (hosted, draining or with commands in flight); sorted by tenant id."""
        return [self.status(name) for name in self.tenant_ids()]

    def tenant_ids(self) -> list[str]:
        """The ids of the tenants ``tenants`` lists, sorted."""
        decision = self._decision
        names = set(self._tenants)
        if decision.placement is not None:
            names.update(
                t for t, s in decision.placement.assignments.items() if s == decision.shard_id
            )
        if decision.hosted_tenants is not None:
            names.update(t for t in decision.hosted_tenants if decision.hosts(t))
        return sorted(names)

    async def drain(self, tenant_id: str, timeout: float) -> DrainResult:  # noqa: ASYNC109
        """Stop admitting ``tenant_id`` (until ``accept``) and wait up to ``timeout``
        seconds for its in-flight commands to finish.

        Cancellation: the tenant stays drained (not admitted); only the waiting stops.
        """
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            tenant = self._tenants[tenant_id] = _Tenant(self, tenant_id)
        tenant.draining = True
        self._refresh(tenant)
        return await self.wait_idle(tenant_id, timeout)

    async def wait_idle(self, tenant_id: str, timeout: float) -> DrainResult:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds until ``tenant_id`` has no command in flight,
        without changing whether it is admitted. Ends early, ``reopened``, if the tenant is
        admitted again meanwhile (a later placement brought it back, or ``accept``).

        Cancellation: nothing changes; the waiting stops.
        """
        tenant = self._tenants.get(tenant_id)
        with anyio.move_on_after(timeout):
            while tenant is not None and tenant.in_flight > 0 and not tenant.open:
                if tenant.idle is None:
                    tenant.idle = anyio.Event()
                await tenant.idle.wait()
        in_flight = tenant.in_flight if tenant is not None else 0
        reopened = tenant is not None and tenant.open and in_flight > 0
        owner = self._decision.owner_of(tenant_id)
        if tenant is not None and in_flight == 0 and not tenant.draining and not tenant.open:
            self._tenants.pop(tenant_id, None)
        return DrainResult(tenant_id, in_flight == 0, in_flight, reopened, owner)

    async def drain_all(self, timeout: float) -> DrainAllResult:  # noqa: ASYNC109
        """Shutdown: admit nothing more, and wait up to ``timeout`` seconds for every
        command in flight. There is no way back: the gate stays closed.

        Cancellation: the gate stays closed; only the waiting stops.
        """
        self._closed = True
        for tenant in self._tenants.values():
            tenant.open = False
        with anyio.move_on_after(timeout):
            while self._total_in_flight > 0:
                if self._all_idle is None:
                    self._all_idle = anyio.Event()
                await self._all_idle.wait()
        busy = {t.tenant_id: t.in_flight for t in self._tenants.values() if t.in_flight > 0}
        return DrainAllResult(not busy, busy)


if TYPE_CHECKING:
    _implements_port: type[ports.TenantGate] = TenantGate
