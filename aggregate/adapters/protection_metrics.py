"""Prometheus metrics of protection: circuit breakers, quotas, load shedding (DESIGN §13).

On the service's injected registry, beside ``aggregate.adapters.metrics``:

- ``aggregate_breaker_state{breaker}``: 0 closed, 1 half-open, 2 open (read at scrape time);
- ``aggregate_breaker_transitions_total{breaker,to}``: state changes;
- ``aggregate_quota_rejections_total{tenant_id,reason}``: commands refused by a tenant's
  quota (``reason``: ``rate`` or ``in_flight``; no ``tenant_id`` label when tenant labels
  are off);
- ``aggregate_quota_paced_total``: calls that put a flooding tenant's connection or
  ``SubmitCommands`` stream in debt: read at its refusal schedule from then on
  (``aggregate.adapters.grpc.pacing``);
- ``aggregate_load_in_flight_limit``: the node's in-flight limit (``max_in_flight``);
- ``aggregate_load_shed_total``: commands refused at that limit;
- ``aggregate_command_queue_depth``: commands waiting for their aggregate's lock (the only
  queue on the command path; it is bounded by the in-flight limit).

Thread-safe like prometheus-client: the hooks run on the island, scrapes on the Trio thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

from aggregate.adapters.metrics import INVALID_LABEL, _CallbackCounter, _safe
from aggregate.application.breaker import BreakerState
from aggregate.application.quota import QuotaObserver
from aggregate.domain.ids import TOKEN_PATTERN

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client import CollectorRegistry

    from aggregate.application.breaker import CircuitBreaker


class ProtectionMetrics(QuotaObserver):
    """The protection metrics on ``registry``; ``quota_rejected`` is the quota hook."""

    def __init__(self, registry: CollectorRegistry, *, tenant_labels: bool = True) -> None:
        self._tenant_labels = tenant_labels
        self._state = Gauge(
            "aggregate_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ("breaker",),
            registry=registry,
        )
        self._transitions = Counter(
            "aggregate_breaker_transitions_total",
            "Circuit breaker state changes, by the state entered.",
            ("breaker", "to"),
            registry=registry,
        )
        self._rejections = Counter(
            "aggregate_quota_rejections_total",
            "Commands refused because their tenant was over its quota.",
            ("tenant_id", "reason") if tenant_labels else ("reason",),
            registry=registry,
        )
        self._paced = _CallbackCounter(
            "aggregate_quota_paced",
            "Calls that put a flooding tenant's connection or stream in debt (then read at "
            "its refusal schedule).",
        )
        registry.register(self._paced)
        self._limit = Gauge(
            "aggregate_load_in_flight_limit",
            "Commands the node handles at once (max_in_flight); more are shed.",
            registry=registry,
        )
        self._shed = _CallbackCounter(
            "aggregate_load_shed", "Commands refused because the node was at max_in_flight."
        )
        registry.register(self._shed)
        self._queue = Gauge(
            "aggregate_command_queue_depth",
            "Commands waiting for their aggregate's lock behind another command.",
            registry=registry,
        )

    def watch_breaker(self, breaker: CircuitBreaker) -> None:
        """Export ``breaker``'s state (its transitions come through ``breaker_moved``)."""
        self._state.labels(breaker.name).set_function(
            _safe(lambda: float(breaker.state), "aggregate_breaker_state")
        )
        for state in BreakerState:
            self._transitions.labels(breaker.name, state.name.lower())

    def breaker_moved(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self._transitions.labels(name, new.name.lower()).inc()

    def quota_rejected(self, tenant_id: str, reason: str) -> None:
        if self._tenant_labels:
            label = tenant_id if TOKEN_PATTERN.fullmatch(tenant_id) else INVALID_LABEL
            self._rejections.labels(label, reason).inc()
        else:
            self._rejections.labels(reason).inc()

    def set_load_limit(self, limit: int) -> None:
        self._limit.set(limit)

    def set_shed_source(self, source: Callable[[], float]) -> None:
        self._shed.set_source(source)

    def set_paced_source(self, source: Callable[[], float]) -> None:
        self._paced.set_source(source)

    def set_queue_depth_source(self, source: Callable[[], float]) -> None:
        self._queue.set_function(_safe(source, "aggregate_command_queue_depth"))
