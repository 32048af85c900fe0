"""Wiring of protection (DESIGN §13): the breakers of the node, and the admission that
applies them and the tenants' quotas.

The breakers are made once per service (Trio side) and shared: the event store's lives on
the island, the snapshot store's is used by the island (loads) and the snapshotter (saves);
``/ready``, ``/health`` and the metrics read them from the Trio thread (they are
thread-safe).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aggregate.application.breaker import BreakerSettings, BreakerState, CircuitBreaker
from aggregate.application.quota import Protection
from aggregate.domain.quota import TenantQuota

if TYPE_CHECKING:
    from aggregate.adapters.protection_metrics import ProtectionMetrics
    from aggregate.application.breaker import BreakerStatus
    from aggregate.config import Settings

log = logging.getLogger(__name__)

EVENT_STORE = "event_store"
SNAPSHOT_STORE = "snapshot_store"


@dataclass(frozen=True)
class Breakers:
    """The node's breakers, by the backend they guard."""

    event_store: CircuitBreaker
    snapshot_store: CircuitBreaker

    @property
    def all(self) -> tuple[CircuitBreaker, ...]:
        return (self.event_store, self.snapshot_store)

    def open_names(self) -> list[str]:
        """The breakers open now (a half-open one is letting probes through)."""
        return [b.name for b in self.all if b.state is BreakerState.OPEN]

    def statuses(self) -> list[BreakerStatus]:
        return [b.status() for b in self.all]


def build_breakers(settings: Settings, metrics: ProtectionMetrics) -> Breakers:
    """The breakers, with ``settings``' thresholds, exported through ``metrics``."""
    tuning = BreakerSettings(
        failure_threshold=settings.breaker_failure_threshold,
        open_seconds=settings.breaker_open_seconds,
    )

    def moved(name: str, old: BreakerState, new: BreakerState) -> None:
        metrics.breaker_moved(name, old, new)
        level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
        log.log(level, "circuit breaker %s: %s -> %s", name, old.name.lower(), new.name.lower())

    breakers = Breakers(
        CircuitBreaker(EVENT_STORE, tuning, on_transition=moved),
        CircuitBreaker(SNAPSHOT_STORE, tuning, on_transition=moved),
    )
    for breaker in breakers.all:
        metrics.watch_breaker(breaker)
    return breakers


def build_protection(
    settings: Settings, breakers: Breakers, metrics: ProtectionMetrics
) -> Protection:
    """The command path's admission: the event store's breaker (a command cannot run without
    it; the snapshot store is only an optimisation) and the quotas of ``settings``."""
    return Protection(
        TenantQuota(
            commands_per_second=settings.quota_commands_per_second,
            burst=settings.quota_burst,
            max_in_flight=settings.quota_max_in_flight,
        ),
        file_overrides=settings.quota_overrides,
        breakers=(breakers.event_store,),
        in_flight_retry_after_ms=settings.overload_retry_after_ms,
        observer=metrics,
    )
