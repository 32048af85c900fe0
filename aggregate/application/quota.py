"""Admission by protection: open breakers and per-tenant quotas (DESIGN §13).

``Protection.admit(tenant_id)`` runs before a command takes its aggregate's lock: it refuses
at once when a breaker the command needs is open (``CircuitOpenError``), then when the
tenant is over its quota (``QuotaExceededError``): a token bucket of
``commands_per_second`` with ``burst`` tokens, and ``max_in_flight`` commands at once. A
refused command costs no token and runs nothing; each error carries ``retry_after_ms``.

Limits: the defaults (settings), then the config file's overrides, then the KV overrides
(watched live), field by field. A tenant's bucket keeps its tokens when its limits change
(capped at the new size).

Belongs to one event loop (the island), like the tenant gate; not thread-safe. The clock is
injected (tests drive it by hand).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aggregate.domain.errors import QuotaExceededError
from aggregate.domain.quota import NO_OVERRIDES, QuotaOverrides, TenantQuota

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

    from aggregate.application.breaker import CircuitBreaker

PRUNE_AT = 10_000
"""Tenants tracked before idle ones (full bucket, nothing in flight) are forgotten."""
PROMISE_TTL_SECONDS = 1.0
"""How long ``check``'s promises count at most (see ``check``): a call that passed the check
and then never released its promise (its client vanished first) stops counting by then."""


class QuotaObserver:
    """Hook for metrics: a tenant's command was refused (``reason``: rate or in_flight)."""

    def quota_rejected(self, tenant_id: str, reason: str) -> None:
        pass


class _Usage:
    """One tenant's bucket and in-flight count; also the context manager ``admit`` returns."""

    __slots__ = ("in_flight", "promises", "quota", "rejected", "tokens", "updated")

    def __init__(self, quota: TenantQuota, now: float) -> None:
        self.quota = quota
        self.tokens = float(quota.bucket_size)
        self.updated = now
        self.in_flight = 0
        self.rejected = 0
        self.promises: deque[float] = deque()
        """When each call that passed ``check(promise=True)`` and has not released it yet
        made its promise, oldest first."""

    def refill(self, now: float) -> None:
        rate = self.quota.commands_per_second
        if rate:
            size = self.quota.bucket_size
            self.tokens = min(size, self.tokens + (now - self.updated) * rate)
        self.updated = now

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.in_flight -= 1


class _NoLimit:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_LIMIT = _NoLimit()


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """A tenant's quota and usage, as ``GET /admin/tenant/{id}/status`` shows it."""

    quota: TenantQuota
    tokens: float
    in_flight: int
    rejected: int

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.quota.as_dict(),
            "tokens": round(self.tokens, 3) if self.quota.commands_per_second else None,
            "in_flight": self.in_flight,
            "rejected": self.rejected,
        }


class Protection:
    """Implements ``ports.TenantGate``'s ``admit`` shape for breakers and quotas."""

    def __init__(
        self,
        defaults: TenantQuota | None = None,
        *,
        file_overrides: QuotaOverrides = NO_OVERRIDES,
        breakers: Sequence[CircuitBreaker] = (),
        in_flight_retry_after_ms: int = 100,
        observer: QuotaObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.defaults = defaults or TenantQuota()
        self.file_overrides = file_overrides
        self.kv_overrides: QuotaOverrides = NO_OVERRIDES
        self.breakers = tuple(breakers)
        self.in_flight_retry_after_ms = in_flight_retry_after_ms
        self.observer = observer or QuotaObserver()
        self._clock = clock
        self._usage: dict[str, _Usage] = {}

    def quota_of(self, tenant_id: str) -> TenantQuota:
        """The tenant's limits: defaults, then file overrides, then KV overrides."""
        quota = self.defaults
        for layer in (self.file_overrides, self.kv_overrides):
            entry = layer.get(tenant_id)
            if entry is not None:
                quota = entry.over(quota)
        return quota

    def set_kv_overrides(self, overrides: QuotaOverrides | None) -> None:
        """Replace the live overrides (None: none); takes effect for the next command."""
        self.kv_overrides = overrides or NO_OVERRIDES
        for tenant_id, usage in self._usage.items():
            usage.refill(self._clock())
            usage.quota = self.quota_of(tenant_id)
            usage.tokens = min(usage.tokens, usage.quota.bucket_size)

    def admit(self, tenant_id: str) -> _Usage | _NoLimit:
        """Admit one command of ``tenant_id``; use as ``with protection.admit(t):``.

        Raises:
            CircuitOpenError: a breaker the command path needs is open.
            QuotaExceededError: the tenant is over its rate or in-flight quota.
        """
        for breaker in self.breakers:
            breaker.check()
        usage = self._usage.get(tenant_id)
        if usage is None:
            quota = self.quota_of(tenant_id)
            if quota.unlimited:
                return _NO_LIMIT
            usage = self._track(tenant_id, quota)
        quota = usage.quota
        if quota.max_in_flight and usage.in_flight >= quota.max_in_flight:
            self._refuse_in_flight(usage, tenant_id)
        rate = quota.commands_per_second
        if rate:
            usage.refill(self._clock())
            if usage.tokens < 1:
                self._refuse_rate(usage, tenant_id)
            usage.tokens -= 1
        usage.in_flight += 1
        return usage

    def check(self, tenant_id: str, *, promise: bool = False) -> None:
        """Refuse at once what ``admit`` would refuse now, spending nothing: the transport
        calls it before it decodes a request, so a refused command costs little.

        With ``promise``, a call that passes counts as a promise until it ``release``s
        it, just before its ``admit``: the calls that passed and are still being read take
        their token and in-flight slot in this check already, so a batch of requests that
        arrive together does not all pass on one token (to be refused, expensively, by
        ``admit``). Each promise counts for ``PROMISE_TTL_SECONDS`` at most from when it was
        made (a call that vanishes without releasing it stops counting then).

        Raises:
            CircuitOpenError, QuotaExceededError: as ``admit``.
        """
        for breaker in self.breakers:
            breaker.check()
        usage = self._usage.get(tenant_id)
        if usage is None:
            return
        quota = usage.quota
        promises = usage.promises
        now = self._clock()
        while promises and now - promises[0] > PROMISE_TTL_SECONDS:
            promises.popleft()
        promised = len(promises)
        if quota.max_in_flight and usage.in_flight + promised >= quota.max_in_flight:
            self._refuse_in_flight(usage, tenant_id)
        rate = quota.commands_per_second
        if rate:
            usage.refill(now)
            if usage.tokens - promised < 1:
                self._refuse_rate(usage, tenant_id, usage.tokens - promised)
        if promise:
            promises.append(now)

    def release(self, tenant_id: str) -> None:
        """A call that passed ``check(promise=True)`` is about to ``admit`` (or ends
        without it): its promise no longer counts. A call without one releases nothing
        (the count stays at 0 or above)."""
        usage = self._usage.get(tenant_id)
        if usage is not None and usage.promises:
            usage.promises.popleft()

    def status(self, tenant_id: str) -> QuotaStatus:
        usage = self._usage.get(tenant_id)
        if usage is None:
            quota = self.quota_of(tenant_id)
            return QuotaStatus(quota, float(quota.bucket_size), 0, 0)
        usage.refill(self._clock())
        return QuotaStatus(usage.quota, usage.tokens, usage.in_flight, usage.rejected)

    def _track(self, tenant_id: str, quota: TenantQuota) -> _Usage:
        now = self._clock()
        if len(self._usage) >= PRUNE_AT:
            for name, old in list(self._usage.items()):
                old.refill(now)
                if old.in_flight == 0 and old.tokens >= old.quota.bucket_size:
                    del self._usage[name]
        usage = self._usage[tenant_id] = _Usage(quota, now)
        return usage

    def _refuse_in_flight(self, usage: _Usage, tenant_id: str) -> None:
        self._refuse(
            usage,
            tenant_id,
            "in_flight",
            f"tenant {tenant_id!r} has {usage.quota.max_in_flight} commands in flight, its "
            f"quota; retry after {self.in_flight_retry_after_ms} ms",
            self.in_flight_retry_after_ms,
        )

    def _refuse_rate(self, usage: _Usage, tenant_id: str, tokens: float | None = None) -> None:
        quota, rate = usage.quota, usage.quota.commands_per_second
        available = usage.tokens if tokens is None else tokens
        wait_ms = max(1, math.ceil((1 - available) / rate * 1000))
        self._refuse(
            usage,
            tenant_id,
            "rate",
            f"tenant {tenant_id!r} is over its quota of {rate} commands per second "
            f"(burst {quota.bucket_size}); retry after {wait_ms} ms",
            wait_ms,
            rate,
        )

    def _refuse(
        self,
        usage: _Usage,
        tenant_id: str,
        reason: str,
        message: str,
        retry_after_ms: int,
        rate: float = 0.0,
    ) -> None:
        usage.rejected += 1
        self.observer.quota_rejected(tenant_id, reason)
        raise QuotaExceededError(
            message, tenant_id=tenant_id, retry_after_ms=retry_after_ms, rate=rate
        )
