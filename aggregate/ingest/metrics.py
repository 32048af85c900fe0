"""Ingestion metrics, on the service's own registry (STYLE 11)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class IngestMetrics:
    """Per source: records (charged / already charged), halts and failures, lag."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._records = Counter(
            "aggregate_ingest_records_total",
            "Usage records consumed, by source and outcome (charged, already_charged).",
            ("tenant_id", "source", "outcome"),
            registry=registry,
        )
        self._errors = Counter(
            "aggregate_ingest_errors_total",
            "Runs of a source that halted on a bad record or failed.",
            ("tenant_id", "source"),
            registry=registry,
        )
        self._lag = Gauge(
            "aggregate_ingest_lag",
            "What a source still holds after its last run: batch files not fully consumed "
            "(directory) or messages pending (JetStream).",
            ("tenant_id", "source"),
            registry=registry,
        )
        self._last_run = Gauge(
            "aggregate_ingest_last_run_timestamp_seconds",
            "When a source's last run ended (unix time).",
            ("tenant_id", "source"),
            registry=registry,
        )

    def records(self, tenant_id: str, source: str, charged: int, already: int) -> None:
        if charged:
            self._records.labels(tenant_id, source, "charged").inc(charged)
        if already:
            self._records.labels(tenant_id, source, "already_charged").inc(already)

    def error(self, tenant_id: str, source: str) -> None:
        self._errors.labels(tenant_id, source).inc()

    def finished(self, tenant_id: str, source: str, *, lag: int, at: float) -> None:
        self._lag.labels(tenant_id, source).set(lag)
        self._last_run.labels(tenant_id, source).set(at)
