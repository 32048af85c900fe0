"""Prometheus metrics of the service (DESIGN §8), on an injected registry (STYLE 11).

``Metrics`` implements the pipeline's observation hooks (``CommandObserver`` and
``HandlerObserver``), so the pipeline never imports prometheus-client. The hooks run on the
command hot path: label children are looked up once and cached, and values the service
already keeps (cache size, snapshot backlog, readiness) are read at scrape time through
callbacks instead of being pushed. prometheus-client is thread-safe; the hooks may be
called from the asyncio island while ``/metrics`` renders on the Trio thread.

Beside the service's own metrics the registry holds the standard ``process_*`` (CPU, memory,
file descriptors), ``python_info`` and ``python_gc_*`` collectors, and
``aggregate_build_info{version}``.

Label values that come from clients are bounded: a tenant id or aggregate type that is not
a valid token becomes ``_invalid``, and with a known set of aggregate types any other type
becomes ``_unknown``. ``tenant_labels=False`` drops the ``tenant_id`` label from every
metric (it is not set to ``""``), for deployments with many tenants.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from aggregate.domain.ids import TOKEN_PATTERN

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from aggregate.domain.ids import AggregateKey

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Seconds; a command takes ~1 ms on a warm cache and seconds only when something is wrong."""

REHYDRATION_BUCKETS = (*LATENCY_BUCKETS, 10.0, 30.0)
"""Seconds; replaying a long stream without a snapshot can take longer than a command."""

INDEX_LAG_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Seconds from a change's commit to its visibility in the index: a batch interval plus a
write, fine-grained around the 50 ms target."""

INDEX_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
"""Changes per index batch."""

INVALID_LABEL = "_invalid"
UNKNOWN_TYPE_LABEL = "_unknown"


def _safe(source: Callable[[], float], name: str) -> Callable[[], float]:
    """A scrape-time callback that never fails the scrape: errors read as NaN."""

    def read() -> float:
        try:
            return float(source())
        except Exception:
            log.debug("metric source for %s failed", name, exc_info=True)
            return math.nan

    return read


class _CallbackCounter(Collector):
    """A counter whose value the service already keeps (e.g. dropped log lines)."""

    def __init__(self, name: str, documentation: str) -> None:
        self._name = name
        self._documentation = documentation
        self._source: Callable[[], float] | None = None

    def set_source(self, source: Callable[[], float]) -> None:
        self._source = _safe(source, self._name)

    def collect(self) -> Iterable[Metric]:
        source = self._source
        family = CounterMetricFamily(self._name, self._documentation)
        family.add_metric([], source() if source is not None else 0.0)
        return [family]

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self._name, self._documentation)]


class Metrics:
    """The service's metrics, registered on ``registry`` (never the process-global one).

    Implements ``CommandObserver`` and ``HandlerObserver``. ``aggregate_types``, when
    given, is the configured set of types: other names are counted as ``_unknown`` so that
    clients cannot grow the label space. ``version`` is the service's, for
    ``aggregate_build_info``.

    Raises:
        ValueError: (from prometheus-client) the registry already holds these metrics.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        tenant_labels: bool = True,
        aggregate_types: Collection[str] | None = None,
        version: str = "0+unknown",
    ) -> None:
        self._registry = registry
        self.registry = registry
        """The registry these metrics live on (subsystems add their own metrics to it)."""
        self._tenant_labels = tenant_labels
        self._types = frozenset(aggregate_types) if aggregate_types is not None else None
        tenant = ("tenant_id",) if tenant_labels else ()
        by_type = ("aggregate_type", *tenant)
        self._commands = Counter(
            "aggregate_commands_total",
            "Commands handled, by outcome (ok or the lower-case gRPC status name).",
            (*by_type, "outcome"),
            registry=registry,
        )
        self._duration = Histogram(
            "aggregate_command_duration_seconds",
            "Time to handle a command, from admission to answer.",
            by_type,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._in_flight = Gauge(
            "aggregate_commands_in_flight",
            "Commands being handled on this node now.",
            registry=registry,
        )
        self._conflicts = Counter(
            "aggregate_version_conflicts_total",
            "Appends refused because the aggregate's stream moved (each retry counts).",
            by_type,
            registry=registry,
        )
        self._rehydration = Histogram(
            "aggregate_rehydration_duration_seconds",
            "Time to load an aggregate that was not cached (snapshot plus events).",
            by_type,
            buckets=REHYDRATION_BUCKETS,
            registry=registry,
        )
        self._rehydrated_events = Counter(
            "aggregate_rehydration_events_total",
            "Events replayed while loading aggregates that were not cached.",
            by_type,
            registry=registry,
        )
        self._tenant_errors = Counter(
            "aggregate_tenant_errors_total",
            "Commands refused for tenant reasons (invalid id, not hosted, draining, denied).",
            (*tenant, "reason"),
            registry=registry,
        )
        self._cache_size = Gauge(
            "aggregate_cache_size", "Aggregates held in the in-memory cache.", registry=registry
        )
        self._snapshot_lag = Gauge(
            "aggregate_snapshot_lag_seconds",
            "Age of the oldest snapshot waiting to be written (0: none waiting).",
            registry=registry,
        )
        self._snapshots_pending = Gauge(
            "aggregate_snapshots_pending",
            "Snapshots handed to the snapshotter and not yet written.",
            registry=registry,
        )
        self._ready = Gauge(
            "aggregate_ready", "1 when the node accepts commands, else 0.", registry=registry
        )
        self._log_drops = _CallbackCounter(
            "aggregate_log_lines_dropped",
            "Log lines not delivered to the logger socket (absent, slow or queue full).",
        )
        registry.register(self._log_drops)
        self._reads = Counter(
            "aggregate_reads_total",
            "Reads of aggregates (GetAggregate), by outcome (ok or the lower-case status name).",
            ("method", *by_type, "outcome"),
            registry=registry,
        )
        self._read_duration = Histogram(
            "aggregate_read_duration_seconds",
            "Time to answer a read (GetAggregate), from the request to the answer.",
            ("method", *by_type),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._nats_connected = Gauge(
            "aggregate_nats_connected",
            "1 while the NATS connection is up, else 0.",
            registry=registry,
        )
        self._index_position = Gauge(
            "aggregate_index_position",
            "Stream position the query index reflects (every message at or below it).",
            registry=registry,
        )
        self._index_lag = Gauge(
            "aggregate_index_lag_positions",
            "Acknowledged positions the query index does not reflect yet.",
            registry=registry,
        )
        self._index_lag_seconds = Gauge(
            "aggregate_index_lag_seconds",
            "Age of the oldest change waiting to be written to the index (0: none).",
            registry=registry,
        )
        self._index_visible = Histogram(
            "aggregate_index_visible_lag_seconds",
            "Time from a change's commit on this node to its batch being visible to queries.",
            buckets=INDEX_LAG_BUCKETS,
            registry=registry,
        )
        self._index_batch_size = Histogram(
            "aggregate_index_batch_changes",
            "Changes written to the query index per batch.",
            buckets=INDEX_BATCH_BUCKETS,
            registry=registry,
        )
        self._index_write = Histogram(
            "aggregate_index_write_seconds",
            "Time to write one batch to the query index (in its writer thread).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._index_replayed = _CallbackCounter(
            "aggregate_index_replayed_messages",
            "Messages read from the stream to rebuild or backfill the query index.",
        )
        registry.register(self._index_replayed)
        Info("aggregate_build", "The running service's version.", registry=registry).info(
            {"version": version}
        )
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        # Label children by the raw values the hooks receive; only valid values are cached,
        # so invalid ones cannot grow these dicts.
        self._command_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._type_children: dict[tuple[str, str], tuple[Counter, Histogram, Counter]] = {}
        self._tenant_error_children: dict[tuple[str, str], Counter] = {}
        self._read_children: dict[tuple[str, str, str, str], tuple[Counter, Histogram]] = {}

    # --- label values ---

    def _tenant_label(self, tenant_id: str) -> str:
        return tenant_id if TOKEN_PATTERN.fullmatch(tenant_id) else INVALID_LABEL

    def _type_label(self, aggregate_type: str) -> str:
        if self._types is not None:
            return aggregate_type if aggregate_type in self._types else UNKNOWN_TYPE_LABEL
        return aggregate_type if TOKEN_PATTERN.fullmatch(aggregate_type) else INVALID_LABEL

    def _by_type(self, tenant_id: str, aggregate_type: str) -> tuple[tuple[str, ...], bool]:
        """Label values of a by-type metric, and whether they are the raw values (cacheable)."""
        type_label = self._type_label(aggregate_type)
        if not self._tenant_labels:
            return (type_label,), type_label == aggregate_type
        tenant_label = self._tenant_label(tenant_id)
        exact = type_label == aggregate_type and tenant_label == tenant_id
        return (type_label, tenant_label), exact

    # --- CommandObserver ---

    def command_started(self, tenant_id: str, aggregate_type: str) -> None:
        self._in_flight.inc()

    def command_finished(
        self, tenant_id: str, aggregate_type: str, outcome: str, seconds: float
    ) -> None:
        self._in_flight.dec()
        key = (tenant_id, aggregate_type, outcome)
        children = self._command_children.get(key)
        if children is None:
            labels, exact = self._by_type(tenant_id, aggregate_type)
            outcome_label = outcome if TOKEN_PATTERN.fullmatch(outcome) else INVALID_LABEL
            children = (
                self._commands.labels(*labels, outcome_label),
                self._duration.labels(*labels),
            )
            if exact and outcome_label == outcome:
                self._command_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def read_finished(
        self, method: str, tenant_id: str, aggregate_type: str, outcome: str, seconds: float
    ) -> None:
        key = (method, tenant_id, aggregate_type, outcome)
        children = self._read_children.get(key)
        if children is None:
            labels, exact = self._by_type(tenant_id, aggregate_type)
            method_label = method if TOKEN_PATTERN.fullmatch(method) else INVALID_LABEL
            outcome_label = outcome if TOKEN_PATTERN.fullmatch(outcome) else INVALID_LABEL
            children = (
                self._reads.labels(method_label, *labels, outcome_label),
                self._read_duration.labels(method_label, *labels),
            )
            if exact and outcome_label == outcome and method_label == method:
                self._read_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def tenant_error(self, tenant_id: str, reason: str) -> None:
        key = (tenant_id, reason)
        child = self._tenant_error_children.get(key)
        if child is None:
            reason_label = reason if TOKEN_PATTERN.fullmatch(reason) else INVALID_LABEL
            if self._tenant_labels:
                tenant_label = self._tenant_label(tenant_id)
                child = self._tenant_errors.labels(tenant_label, reason_label)
                exact = tenant_label == tenant_id
            else:
                child = self._tenant_errors.labels(reason_label)
                exact = True
            if exact and reason_label == reason:
                self._tenant_error_children[key] = child
        child.inc()

    # --- HandlerObserver ---

    def _type_children_of(self, key: AggregateKey) -> tuple[Counter, Histogram, Counter]:
        cache_key = (key.tenant_id, key.aggregate_type)
        children = self._type_children.get(cache_key)
        if children is None:
            labels, exact = self._by_type(key.tenant_id, key.aggregate_type)
            children = (
                self._conflicts.labels(*labels),
                self._rehydration.labels(*labels),
                self._rehydrated_events.labels(*labels),
            )
            if exact:
                self._type_children[cache_key] = children
        return children

    def conflict(self, key: AggregateKey) -> None:
        self._type_children_of(key)[0].inc()

    def rehydrated(self, key: AggregateKey, seconds: float, events: int) -> None:
        _, duration, replayed = self._type_children_of(key)
        duration.observe(seconds)
        replayed.inc(events)

    # --- values read at scrape time ---

    def set_cache_size_source(self, source: Callable[[], float]) -> None:
        """Read ``aggregate_cache_size`` from ``source`` at each scrape (from any thread)."""
        self._cache_size.set_function(_safe(source, "aggregate_cache_size"))

    def set_snapshot_lag_source(self, source: Callable[[], float]) -> None:
        """Read ``aggregate_snapshot_lag_seconds`` from ``source`` at each scrape."""
        self._snapshot_lag.set_function(_safe(source, "aggregate_snapshot_lag_seconds"))

    def set_snapshots_pending_source(self, source: Callable[[], float]) -> None:
        """Read ``aggregate_snapshots_pending`` from ``source`` at each scrape."""
        self._snapshots_pending.set_function(_safe(source, "aggregate_snapshots_pending"))

    def set_log_drops_source(self, source: Callable[[], float]) -> None:
        """Read ``aggregate_log_lines_dropped_total`` (e.g. ``LogSocketSink.dropped``)."""
        self._log_drops.set_source(source)

    def set_nats_connected_source(self, source: Callable[[], bool]) -> None:
        """Read ``aggregate_nats_connected`` from ``source`` (True → 1) at each scrape."""
        self._nats_connected.set_function(
            _safe(lambda: 1.0 if source() else 0.0, "aggregate_nats_connected")
        )

    def set_index_source(self, status: Callable[[], Mapping[str, Any]]) -> None:
        """Read the ``aggregate_index_*`` metrics from ``status`` (``Indexer.status``)."""
        self._index_position.set_function(
            _safe(lambda: float(status()["position"]), "aggregate_index_position")
        )
        self._index_lag.set_function(
            _safe(lambda: float(status()["lag_positions"]), "aggregate_index_lag_positions")
        )
        self._index_lag_seconds.set_function(
            _safe(lambda: float(status()["lag_seconds"]), "aggregate_index_lag_seconds")
        )
        self._index_replayed.set_source(lambda: float(status()["replayed_messages"]))

    def index_batch(self, lags_s: Sequence[float], size: int, write_s: float) -> None:
        """``IndexObserver``: one batch of the query index (island thread)."""
        observe = self._index_visible.observe
        for lag in lags_s:
            observe(lag)
        if size:
            self._index_batch_size.observe(size)
            self._index_write.observe(write_s)

    def set_ready(self, ready: bool) -> None:
        """Set ``aggregate_ready``; ignored once ``set_ready_source`` was called."""
        self._ready.set(1 if ready else 0)

    def set_ready_source(self, source: Callable[[], bool]) -> None:
        """Read ``aggregate_ready`` from ``source`` (True → 1) at each scrape."""
        self._ready.set_function(_safe(lambda: 1.0 if source() else 0.0, "aggregate_ready"))

    # --- exposition ---

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition for ``GET /metrics`` and its content type.

        ``accept`` is the request's Accept header: OpenMetrics when the scraper asks for it,
        else the Prometheus text format.
        """
        if accept:
            encoder, content_type = choose_encoder(accept)
            return encoder(self._registry), content_type
        return generate_latest(self._registry), CONTENT_TYPE_LATEST
