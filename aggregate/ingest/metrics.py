"""Ingestion metrics, on the service's own registry (STYLE 11)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class IngestMetrics:
    """Per source: records (charged / already charged), halts and failures, lag. Without
    tenant labels (``AGGREGATE_METRICS_TENANT_LABELS=false``) sources are labelled by name
    only."""

    def __init__(self, registry: CollectorRegistry, *, tenant_labels: bool = True) -> None:
        self._tenant_labels = tenant_labels
        by = ("tenant_id", "source") if tenant_labels else ("source",)
        self._records = Counter(
            "aggregate_ingest_records_total",
            "Usage records consumed, by source and outcome (charged, already_charged).",
            (*by, "outcome"),
            registry=registry,
        )
        self._errors = Counter(
            "aggregate_ingest_errors_total",
            "Runs of a source that halted on a bad record or failed.",
            by,
            registry=registry,
        )
        self._lag = Gauge(
            "aggregate_ingest_lag",
            "What a source still holds after its last run: batch files not fully consumed "
            "(directory) or messages pending (JetStream).",
            by,
            registry=registry,
        )
        self._last_run = Gauge(
            "aggregate_ingest_last_run_timestamp_seconds",
            "When a source's last run ended (unix time).",
            by,
            registry=registry,
        )

    def _by(self, tenant_id: str, source: str) -> tuple[str, ...]:
        return (tenant_id, source) if self._tenant_labels else (source,)

    def records(self, tenant_id: str, source: str, charged: int, already: int) -> None:
        by = self._by(tenant_id, source)
        if charged:
            self._records.labels(*by, "charged").inc(charged)
        if already:
            self._records.labels(*by, "already_charged").inc(already)

    def error(self, tenant_id: str, source: str) -> None:
        self._errors.labels(*self._by(tenant_id, source)).inc()

    def finished(self, tenant_id: str, source: str, *, lag: int, at: float) -> None:
        self._lag.labels(*self._by(tenant_id, source)).set(lag)
        self._last_run.labels(*self._by(tenant_id, source)).set(at)
