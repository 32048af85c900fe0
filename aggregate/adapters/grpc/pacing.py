"""Reading a flooding client more slowly: the cost of its refused calls stays on it.

A tenant offering ten times its quota is refused thousands of times a second. Each refusal
is answered from the call's headers (``aggregate.adapters.grpc.early``), but reading them
is still HTTP/2 and HPACK in Python: ~300 µs of the island's one core per refused call, so
a flood of refusals alone could take most of the core every other tenant's commands run on.
Refusing faster has a floor (the frames must be parsed to know whose call it is); reading
the flood more slowly has none. So:

- **A read schedule per tenant** (``RefusalPacer``), kept as a virtual time (the generic
  cell rate algorithm) with one second's worth free: each quota refusal of the tenant
  costs ``1 / (pace + rate)`` seconds of it, where ``pace`` is the refusal budget
  (``pace_refusals_per_second``) and ``rate`` the tenant's commands/s quota that refused
  the call (0 for its in-flight quota). A refusal past the free second is still answered
  at once; it puts the connection that carried it in debt: the time until the schedule
  has caught up with it.
- **A connection in debt is not read** until its debt is paid (``ReadPacing``,
  applied by ``TrackedProtocol.data_received``): what the client sent waits in the socket,
  then in TCP's window, and the client's own sends block. While a connection is paced
  (in debt within the last ``WINDOW_SECONDS``) its bytes are read in slices of
  ``SLICE_BYTES``, and each call read on it costs the schedule the same, admitted or not:
  the tenant's dedicated connections are then read at ``pace + rate`` calls a second in
  all, evenly, so the quota admits its ``rate`` of them (the tenant keeps its quota) and
  ``pace`` are refused, and the tokens its bucket gathers while the connection waits are
  not spent in one burst that would queue every other tenant's commands behind it.
  Under an in-flight quota only refusals cost: admitted calls are bounded by the slots.
- **Only a connection dedicated to the tenant** is paced: one on which every call with an
  ``x-tenant-id`` in the last ``WINDOW_SECONDS`` was that tenant's. A connection that
  carries several tenants (an API gateway's) is never slowed for one of them: there the
  refusals cost what they cost, as before.
- **A ``SubmitCommands`` stream** carries one tenant's commands (its call's
  ``x-tenant-id``), so it is paced the same way whatever its connection carries: each
  command's outcome is observed as it completes, and while its *tenant* is in debt
  (``RefusalPacer.debt``: its schedule more than the free second ahead of the clock) the
  stream's next request is not read (``aggregate.adapters.grpc.streaming``). The tenant's
  debt, not the stream's own: a new stream of a tenant in debt reads nothing until the
  debt is paid, so opening a stream per command buys no more refusals than one stream.
  In a stream the refusals are cheap (no HTTP/2 stream, no HPACK), so without this a
  stream of refused commands came back as fast as the client could send them: about ten
  thousand a second, the command path's core for one tenant.

Only quota refusals (``QuotaExceededError``) cost: an open breaker or the node's in-flight
limit are the node's state, not the client's doing. The schedule is per tenant, not per
connection or stream, so opening more of them buys a flooder no more refusals a second.
"""

from __future__ import annotations

from dataclasses import dataclass

from aggregate.domain.context import TENANT_HEADER

SLICE_BYTES = 256
"""How much of a paced connection's input is fed to HTTP/2 at a time: one or two calls."""

WINDOW_SECONDS = 1.0
"""How recent "recently" is: a connection that carried a second tenant's call this recently
is not paced; one that was in debt this recently is still paced (sliced, every call costs)."""

MAX_TENANTS = 4096
"""Refusal budgets kept at once; beyond it, those with nothing owed are dropped first."""


@dataclass(slots=True)
class RefusalPacer:
    """The node's read schedules, one per tenant, for ``pace`` refusals a second beyond
    the quota (0: no pacing). ``spend`` is called for each call that costs; the clock is
    the caller's (monotonic seconds)."""

    pace: float
    _due: dict[str, float]
    """Per tenant: the time by which the schedule has paid for every call spent."""
    paced: int = 0
    """Calls that put their connection in debt."""

    @classmethod
    def of(cls, pace: float) -> RefusalPacer:
        return cls(pace, {})

    @property
    def enabled(self) -> bool:
        return self.pace > 0

    def cost(self, rate: float) -> float:
        """Seconds of the schedule one call costs for a tenant with a ``rate`` quota."""
        return 1.0 / (self.pace + rate)

    def spend(self, tenant: str, now: float, cost: float) -> float:
        """Spend ``cost`` seconds of ``tenant``'s schedule at ``now``: the seconds its
        connection must wait before it is read again (0: within the free second)."""
        due = max(self._due.get(tenant, now), now) + cost
        if tenant not in self._due and len(self._due) >= MAX_TENANTS:
            self._forget(now)
        self._due[tenant] = due
        debt = due - now - 1.0
        if debt <= 0:
            return 0.0
        self.paced += 1
        return debt

    def debt(self, tenant: str, now: float) -> float:
        """Seconds until ``tenant``'s schedule is back within its free second (0: none)."""
        return max(0.0, self._due.get(tenant, now) - now - 1.0)

    def _forget(self, now: float) -> None:
        """Drop the schedules that owe nothing; if none, the oldest half."""
        idle = [tenant for tenant, due in self._due.items() if due <= now]
        if not idle:
            idle = sorted(self._due, key=self._due.__getitem__)[: len(self._due) // 2]
        for tenant in idle:
            del self._due[tenant]


@dataclass(slots=True)
class ReadPacing:
    """One reader's side of the pacing, a connection's or a ``SubmitCommands`` stream's:
    whose calls it carries, and until when it must not be read (``resume_at``, on the
    caller's monotonic clock). A stream carries one tenant's calls only, so it is always
    paced by its tenant's schedule, whatever else its connection carries; its reader waits
    for the tenant's debt (``RefusalPacer.debt``), which covers its own ``resume_at``."""

    pacer: RefusalPacer
    tenant: str | None = None
    """The ``x-tenant-id`` of the last call that had one."""
    mixed_until: float = float("-inf")
    """Until then the connection counts as carrying several tenants."""
    resume_at: float = float("-inf")
    paced_until: float = float("-inf")
    """Until then the connection is paced: sliced, and every call costs."""
    paced_tenant: str = ""
    paced_cost: float = 0.0
    """What an admitted call costs ``paced_tenant``'s schedule while paced (0: nothing)."""

    def observe(
        self, tenant_header: str | None, refused: str | None, rate: float, now: float
    ) -> None:
        """A call arrived carrying ``tenant_header`` (None: no ``x-tenant-id``); it was
        refused by tenant ``refused``'s quota (None: not a quota refusal), whose commands/s
        quota is ``rate`` (0: refused by its in-flight quota)."""
        if tenant_header is not None and tenant_header != self.tenant:
            if self.tenant is not None:
                self.mixed_until = now + WINDOW_SECONDS
                self.paced_until = self.resume_at = float("-inf")
            self.tenant = tenant_header
        pacer = self.pacer
        if not pacer.enabled or now < self.mixed_until:
            return
        if refused is not None:
            tenant, cost = refused, pacer.cost(rate)
            self.paced_tenant, self.paced_cost = refused, cost if rate else 0.0
        elif now < self.paced_until and self.paced_cost:
            tenant, cost = self.paced_tenant, self.paced_cost
        else:
            return
        delay = pacer.spend(tenant, now, cost)
        if delay > 0:
            self.resume_at = max(self.resume_at, now + delay)
            self.paced_until = self.resume_at + WINDOW_SECONDS

    def must_wait(self, now: float) -> bool:
        """Whether the connection is in debt now (not to be read)."""
        return now < self.resume_at

    def slicing(self, now: float) -> bool:
        """Whether input is fed in ``SLICE_BYTES`` slices (paced recently)."""
        return now < self.paced_until


def stream_outcome(pacing: ReadPacing, tenant: str, quota_rate: float | None, now: float) -> None:
    """A command of ``tenant``'s ``SubmitCommands`` stream completed at ``now``: refused by
    the tenant's quota whose commands/s are ``quota_rate`` (0: its in-flight quota), or not
    (None). An admitted command costs only while the stream is paced under a rate quota,
    so the common case (never refused) does nothing."""
    if quota_rate is not None:
        pacing.observe(tenant, tenant, quota_rate, now)
    elif pacing.paced_cost:
        pacing.observe(tenant, None, 0.0, now)


def tenant_header(headers: list[tuple[str, str]]) -> str | None:
    """The first ``x-tenant-id`` value of a request's headers, or None."""
    for name, value in headers:
        if name == TENANT_HEADER:
            return value
    return None
