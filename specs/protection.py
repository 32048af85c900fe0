"""The executable model of protection: per-tenant quotas and the node's in-flight limit.

Obviously correct, exact arithmetic (``Fraction``), no performance tricks. One ``QuotaModel``
per node (quotas are per node). A tenant's bucket starts full (``burst`` tokens, or one
second's worth), gains ``rate`` tokens per second of clock, never holds more than full;
a command is admitted when the tenant has fewer than ``max_in_flight`` commands in flight
and, with a rate, at least one token, which it spends. A refused command spends nothing
and changes nothing (``QuotaExceededError``). 0 means "no limit" for each of the three.

The early check (``early_check``), made when a call's headers arrive, before its command is
read: it refuses what ``admit`` would refuse now, counting the promises of the calls that
passed it and have not yet come to ``admit`` (``release``) as tokens and slots already
taken. Each promise counts for ``PROMISE_TTL`` seconds at most, from when it was made (a
call that vanished never releases its own); a release ends the oldest. A tenant no
command has come to ``admit`` for yet passes and holds no promise. Promises never change
what ``admit`` decides: the bucket alone does.

The node's in-flight limit is simpler still: with ``limit`` commands in flight a new one is
refused at once (``OverloadedError``), never queued (``shed``).

The invariants are in ``specs/INVARIANTS.md`` (9 and 10).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction


@dataclass(frozen=True)
class Limits:
    rate: int = 0
    burst: int = 0
    max_in_flight: int = 0

    @property
    def full(self) -> int:
        return self.burst or max(1, self.rate)


PROMISE_TTL = Fraction(1)


@dataclass
class TenantUsage:
    tokens: Fraction
    in_flight: int = 0
    promises: list[Fraction] = field(default_factory=list)
    """When each promise still held was made, oldest first."""


@dataclass
class QuotaModel:
    """The quotas of one node; ``now`` is its clock in seconds."""

    limits: dict[str, Limits]
    now: Fraction = Fraction(0)
    usage: dict[str, TenantUsage] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    """Tenants with a limit that a command has come to ``admit`` for."""

    def limits_of(self, tenant: str) -> Limits:
        return self.limits.get(tenant, Limits())

    def _usage(self, tenant: str) -> TenantUsage:
        if tenant not in self.usage:
            self.usage[tenant] = TenantUsage(Fraction(self.limits_of(tenant).full))
        return self.usage[tenant]

    def advance(self, seconds: Fraction) -> None:
        """Time passes: every bucket refills, up to full."""
        self.now += seconds
        for tenant, usage in self.usage.items():
            limits = self.limits_of(tenant)
            if limits.rate:
                usage.tokens = min(Fraction(limits.full), usage.tokens + limits.rate * seconds)

    def tokens(self, tenant: str) -> Fraction:
        return self._usage(tenant).tokens

    def admits(self, tenant: str) -> bool:
        """Whether a command of ``tenant`` would be admitted now (changes nothing)."""
        limits, usage = self.limits_of(tenant), self._usage(tenant)
        if limits.max_in_flight and usage.in_flight >= limits.max_in_flight:
            return False
        return not (limits.rate and usage.tokens < 1)

    def admit(self, tenant: str) -> bool:
        """Admit one command (it spends a token and is in flight until ``finish``), or
        refuse it (nothing changes). Returns whether it was admitted."""
        if self.limits_of(tenant) != Limits():
            self.seen.add(tenant)
        if not self.admits(tenant):
            return False
        usage = self._usage(tenant)
        if self.limits_of(tenant).rate:
            usage.tokens -= 1
        usage.in_flight += 1
        return True

    def finish(self, tenant: str) -> None:
        self._usage(tenant).in_flight -= 1

    def early_check(self, tenant: str) -> bool:
        """Whether a call of ``tenant`` passes the early check; one that passes holds a
        promise (of a tenant already seen) until ``release``."""
        if tenant not in self.seen:
            return True
        limits, usage = self.limits_of(tenant), self._usage(tenant)
        usage.promises = [at for at in usage.promises if self.now - at <= PROMISE_TTL]
        promised = len(usage.promises)
        if limits.max_in_flight and usage.in_flight + promised >= limits.max_in_flight:
            return False
        if limits.rate and usage.tokens - promised < 1:
            return False
        usage.promises.append(self.now)
        return True

    def release(self, tenant: str) -> None:
        """A call that passed ``early_check`` comes to ``admit`` (or ends): its promise no
        longer counts; without one, nothing changes."""
        usage = self.usage.get(tenant)
        if usage is not None and usage.promises:
            del usage.promises[0]


def shed(in_flight: int, limit: int) -> bool:
    """Whether the node refuses a new command at once: it is at its in-flight limit."""
    return in_flight >= limit


# --- read pacing of a flooding tenant's connections (aggregate.adapters.grpc.pacing) ---

MIXED_WINDOW = Fraction(1)
FREE = Fraction(1)
"""Seconds of a tenant's read schedule that may be spent ahead of the clock for free."""


@dataclass
class ConnectionModel:
    tenant: str | None = None
    """The tenant of the last call that named one."""
    mixed_at: Fraction | None = None
    """When a call named a second tenant last."""
    paid_at: Fraction | None = None
    """Until then the connection is not read (it is in debt)."""
    cost: Fraction = Fraction(0)
    """What an admitted call costs its tenant while the connection is paced."""
    cost_tenant: str = ""


@dataclass
class PacingModel:
    """Read pacing, plainly: a tenant's quota refusals on connections that carry only its
    calls spend its read schedule, ``1 / (pace + rate)`` seconds each (``rate``: its
    commands/s quota that refused; 0 for the in-flight quota); while a connection is paced
    (until ``MIXED_WINDOW`` after the end of its last debt) an admitted call
    of a rate-refused tenant costs the same. The schedule may run ``FREE`` seconds ahead of
    the clock; a call that takes it further puts its connection in debt until the clock
    is ``FREE`` behind it. A connection that named a second tenant within ``MIXED_WINDOW``
    is never paced and spends nothing. ``pace`` 0: nothing is ever paced.

    A ``SubmitCommands`` stream is a reader of its own (``stream_command``): it carries its
    one tenant's commands only, so it is a connection that never names a second tenant,
    and it spends the same schedule as that tenant's connections. A stream is not read
    while its tenant is in debt (``tenant_in_debt``), however new the stream."""

    pace: int
    due: dict[str, Fraction] = field(default_factory=dict)
    connections: dict[int, ConnectionModel] = field(default_factory=dict)
    paced: int = 0

    def paced_now(self, conn: ConnectionModel, now: Fraction) -> bool:
        return conn.paid_at is not None and now < conn.paid_at + MIXED_WINDOW

    def in_debt(self, connection: int, now: Fraction) -> bool:
        conn = self.connections.get(connection, ConnectionModel())
        return conn.paid_at is not None and now < conn.paid_at

    def call(
        self,
        connection: int,
        now: Fraction,
        tenant: str | None,
        refused: str | None = None,
        rate: int = 0,
    ) -> None:
        """A call on ``connection`` at ``now`` naming ``tenant``, refused by ``refused``'s
        quota (None: not a quota refusal) whose commands/s are ``rate``."""
        conn = self.connections.setdefault(connection, ConnectionModel())
        if tenant is not None and tenant != conn.tenant:
            if conn.tenant is not None:
                conn.mixed_at, conn.paid_at = now, None
            conn.tenant = tenant
        if not self.pace or (conn.mixed_at is not None and now < conn.mixed_at + MIXED_WINDOW):
            return
        if refused is not None:
            spender, cost = refused, Fraction(1, self.pace + rate)
            conn.cost_tenant, conn.cost = refused, cost if rate else Fraction(0)
        elif self.paced_now(conn, now) and conn.cost:
            spender, cost = conn.cost_tenant, conn.cost
        else:
            return
        due = max(self.due.get(spender, now), now) + cost
        self.due[spender] = due
        if due - now > FREE:
            self.paced += 1
            paid = due - FREE
            conn.paid_at = paid if conn.paid_at is None else max(conn.paid_at, paid)

    def tenant_in_debt(self, tenant: str, now: Fraction) -> bool:
        """Whether ``tenant``'s schedule is more than ``FREE`` ahead of the clock: its
        streams, old and new, read nothing until it is not."""
        due = self.due.get(tenant)
        return due is not None and due - now > FREE

    def stream_command(
        self, stream: int, now: Fraction, tenant: str, refused: bool, rate: int = 0
    ) -> None:
        """A command of ``tenant``'s stream ``stream`` (a reader id no connection uses)
        completed at ``now``, refused by the tenant's quota (``rate``: its commands/s
        quota that refused, 0 for its in-flight quota) or not."""
        self.call(stream, now, tenant, tenant if refused else None, rate)
