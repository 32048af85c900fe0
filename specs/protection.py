"""The executable model of protection: per-tenant quotas and the node's in-flight limit.

Obviously correct, exact arithmetic (``Fraction``), no performance tricks. One ``QuotaModel``
per node (quotas are per node). A tenant's bucket starts full (``burst`` tokens, or one
second's worth), gains ``rate`` tokens per second of clock, never holds more than full;
a command is admitted when the tenant has fewer than ``max_in_flight`` commands in flight
and, with a rate, at least one token, which it spends. A refused command spends nothing
and changes nothing (``QuotaExceededError``). 0 means "no limit" for each of the three.

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


@dataclass
class TenantUsage:
    tokens: Fraction
    in_flight: int = 0


@dataclass
class QuotaModel:
    """The quotas of one node; ``now`` is its clock in seconds."""

    limits: dict[str, Limits]
    now: Fraction = Fraction(0)
    usage: dict[str, TenantUsage] = field(default_factory=dict)

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
        if not self.admits(tenant):
            return False
        usage = self._usage(tenant)
        if self.limits_of(tenant).rate:
            usage.tokens -= 1
        usage.in_flight += 1
        return True

    def finish(self, tenant: str) -> None:
        self._usage(tenant).in_flight -= 1


def shed(in_flight: int, limit: int) -> bool:
    """Whether the node refuses a new command at once: it is at its in-flight limit."""
    return in_flight >= limit
