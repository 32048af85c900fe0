"""The metrics adapter: names, labels and values as a scraper parses them (DESIGN §8)."""

from __future__ import annotations

import inspect
import math
import uuid

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from aggregate.adapters.metrics import Metrics
from aggregate.application.handler import HandlerObserver
from aggregate.application.observe import CommandObserver
from aggregate.domain.ids import AggregateKey

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: Metrics) -> Samples:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def key(tenant: str = "acme", kind: str = "account") -> AggregateKey:
    return AggregateKey(tenant, kind, uuid.uuid4())


def record_traffic(metrics: Metrics) -> None:
    for seconds in (0.0004, 0.003, 0.2):
        metrics.command_started("acme", "account")
        metrics.command_finished("acme", "account", "ok", seconds)
    metrics.command_started("acme", "account")
    metrics.command_finished("acme", "account", "failed_precondition", 0.002)
    metrics.command_started("globex", "account")
    metrics.command_finished("globex", "account", "ok", 0.001)
    metrics.command_started("acme", "account")  # still in flight
    metrics.conflict(key())
    metrics.conflict(key())
    metrics.rehydrated(key(), 0.05, events=7)
    metrics.tenant_error("initech", "not_hosted")


@pytest.mark.parametrize("protocol", [CommandObserver, HandlerObserver])
def test_metrics_implements_the_observer_protocols(protocol: type) -> None:
    hooks = [name for name in vars(protocol) if not name.startswith("_")]
    assert hooks
    for name in hooks:
        wanted = inspect.signature(getattr(protocol, name))
        assert inspect.signature(getattr(Metrics, name)).parameters == wanted.parameters, name


def test_recorded_traffic_appears_in_the_exposition() -> None:
    metrics = Metrics(CollectorRegistry())
    record_traffic(metrics)
    s = scrape(metrics)
    ok = {"aggregate_type": "account", "tenant_id": "acme", "outcome": "ok"}
    assert value(s, "aggregate_commands_total", **ok) == 3
    rejected = {**ok, "outcome": "failed_precondition"}
    assert value(s, "aggregate_commands_total", **rejected) == 1
    assert value(s, "aggregate_commands_total", **{**ok, "tenant_id": "globex"}) == 1
    by_type = {"aggregate_type": "account", "tenant_id": "acme"}
    assert value(s, "aggregate_command_duration_seconds_count", **by_type) == 4
    assert value(s, "aggregate_command_duration_seconds_sum", **by_type) == pytest.approx(0.2054)
    # 0.4 ms falls in the first bucket (0.5 ms); 3 ms and 2 ms in the 5 ms one.
    assert value(s, "aggregate_command_duration_seconds_bucket", **by_type, le="0.0005") == 1
    assert value(s, "aggregate_command_duration_seconds_bucket", **by_type, le="0.005") == 3
    assert value(s, "aggregate_command_duration_seconds_bucket", **by_type, le="5.0") == 4
    assert value(s, "aggregate_commands_in_flight") == 1
    assert value(s, "aggregate_version_conflicts_total", **by_type) == 2
    assert value(s, "aggregate_rehydration_duration_seconds_count", **by_type) == 1
    assert value(s, "aggregate_rehydration_events_total", **by_type) == 7
    assert value(s, "aggregate_tenant_errors_total", tenant_id="initech", reason="not_hosted") == 1


def test_tenant_labels_off_drops_the_label_everywhere() -> None:
    metrics = Metrics(CollectorRegistry(), tenant_labels=False)
    record_traffic(metrics)
    s = scrape(metrics)
    assert not [name for name, labels in s if any(k == "tenant_id" for k, _ in labels)]
    # acme and globex now add up under one series.
    assert value(s, "aggregate_commands_total", aggregate_type="account", outcome="ok") == 4
    assert value(s, "aggregate_version_conflicts_total", aggregate_type="account") == 2
    assert value(s, "aggregate_tenant_errors_total", reason="not_hosted") == 1


def test_two_registries_do_not_interfere() -> None:
    first, second = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    first.command_started("acme", "account")
    first.command_finished("acme", "account", "ok", 0.001)
    labels = {"aggregate_type": "account", "tenant_id": "acme", "outcome": "ok"}
    assert value(scrape(first), "aggregate_commands_total", **labels) == 1
    assert ("aggregate_commands_total", frozenset(labels.items())) not in scrape(second)


def test_a_registry_holds_one_metrics() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry)


def test_client_supplied_label_values_are_bounded() -> None:
    metrics = Metrics(CollectorRegistry(), aggregate_types={"account"})
    for i in range(5):
        metrics.command_started(f"bad tenant {i}", f"type{i}")
        metrics.command_finished(f"bad tenant {i}", f"type{i}", "invalid_argument", 0.001)
        metrics.tenant_error(f"bad\ntenant{i}", "invalid_tenant")
    s = scrape(metrics)
    labels = {"aggregate_type": "_unknown", "tenant_id": "_invalid", "outcome": "invalid_argument"}
    assert value(s, "aggregate_commands_total", **labels) == 5
    assert (
        value(s, "aggregate_tenant_errors_total", tenant_id="_invalid", reason="invalid_tenant")
        == 5
    )
    assert len([name for name, _ in s if name == "aggregate_commands_total"]) == 1


def test_scrape_time_sources_are_read_at_each_scrape() -> None:
    metrics = Metrics(CollectorRegistry())
    sizes = iter([3, 5])
    ready = [False]
    metrics.set_cache_size_source(lambda: next(sizes))
    metrics.set_snapshot_lag_source(lambda: 1.5)
    metrics.set_snapshots_pending_source(lambda: 2)
    metrics.set_log_drops_source(lambda: 9)
    metrics.set_ready_source(lambda: ready[0])
    first = scrape(metrics)
    assert value(first, "aggregate_cache_size") == 3
    assert value(first, "aggregate_snapshot_lag_seconds") == 1.5
    assert value(first, "aggregate_snapshots_pending") == 2
    assert value(first, "aggregate_log_lines_dropped_total") == 9
    assert value(first, "aggregate_ready") == 0
    ready[0] = True
    second = scrape(metrics)
    assert value(second, "aggregate_cache_size") == 5
    assert value(second, "aggregate_ready") == 1


def test_a_failing_source_reads_nan_and_does_not_break_the_scrape() -> None:
    metrics = Metrics(CollectorRegistry())

    def broken() -> float:
        raise RuntimeError("cache gone")

    metrics.set_cache_size_source(broken)
    metrics.set_ready(True)
    s = scrape(metrics)
    assert math.isnan(value(s, "aggregate_cache_size"))
    assert value(s, "aggregate_ready") == 1


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    metrics = Metrics(CollectorRegistry())
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_process_and_python_collectors_are_on_the_injected_registry() -> None:
    s = scrape(Metrics(CollectorRegistry()))  # a fresh registry has none of its own
    names = {name for name, _ in s}
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "python_gc_collections_total",
    ):
        assert name in names, name
    (info,) = [dict(labels) for name, labels in s if name == "python_info"]
    assert info["implementation"] == "CPython"


def test_build_info_carries_the_version() -> None:
    s = scrape(Metrics(CollectorRegistry(), version="1.2.3"))
    assert value(s, "aggregate_build_info", version="1.2.3") == 1
    assert len([name for name, _ in s if name == "aggregate_build_info"]) == 1


def test_nats_connected_is_read_at_each_scrape() -> None:
    metrics = Metrics(CollectorRegistry())
    connected = [True]
    metrics.set_nats_connected_source(lambda: connected[0])
    assert value(scrape(metrics), "aggregate_nats_connected") == 1
    connected[0] = False
    assert value(scrape(metrics), "aggregate_nats_connected") == 0


def test_reads_are_counted_and_timed_by_method_type_tenant_and_outcome() -> None:
    metrics = Metrics(CollectorRegistry(), aggregate_types={"account"})
    metrics.read_finished("GetAggregate", "acme", "account", "ok", 0.002)
    metrics.read_finished("GetAggregate", "acme", "account", "ok", 0.2)
    metrics.read_finished("GetAggregate", "acme", "account", "not_found", 0.001)
    metrics.read_finished("GetAggregate", "bad tenant", "nope", "invalid_argument", 0.001)
    s = scrape(metrics)
    labels = {"method": "GetAggregate", "aggregate_type": "account", "tenant_id": "acme"}
    assert value(s, "aggregate_reads_total", **labels, outcome="ok") == 2
    assert value(s, "aggregate_reads_total", **labels, outcome="not_found") == 1
    assert value(s, "aggregate_read_duration_seconds_count", **labels) == 3
    assert value(s, "aggregate_read_duration_seconds_bucket", **labels, le="0.005") == 2
    bounded = {"method": "GetAggregate", "aggregate_type": "_unknown", "tenant_id": "_invalid"}
    assert value(s, "aggregate_reads_total", **bounded, outcome="invalid_argument") == 1
    untenanted = Metrics(CollectorRegistry(), tenant_labels=False)
    untenanted.read_finished("GetAggregate", "acme", "account", "ok", 0.002)
    assert (
        value(
            scrape(untenanted),
            "aggregate_reads_total",
            method="GetAggregate",
            aggregate_type="account",
            outcome="ok",
        )
        == 1
    )
