"""The service's protection wiring: breakers make the node unready and show in /health;
the protection metrics, with and without tenant labels."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aggregate.adapters.protection_metrics import ProtectionMetrics
from aggregate.application.breaker import BreakerSettings, CircuitBreaker
from aggregate.config import Settings
from aggregate.domain.errors import BackendUnavailableError
from aggregate.service.admin_backend import IslandAdminBackend
from aggregate.service.app import Service

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(registry: CollectorRegistry) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }


class ConnectedCore:
    connected = True
    handler = None
    indexer = None


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.settings.failure_threshold):
        with pytest.raises(BackendUnavailableError), breaker.guard():
            raise BackendUnavailableError("nats: timeout")


def serving_service(**settings: Any) -> Service:
    service = Service(Settings(breaker_failure_threshold=2, **settings))
    service.state = "serving"
    service.core = ConnectedCore()  # type: ignore[assignment]
    return service


def test_an_open_breaker_makes_a_connected_node_unready_and_health_says_which() -> None:
    service = serving_service()
    backend = IslandAdminBackend(service, None, service.core)  # type: ignore[arg-type]
    assert service.ready()
    assert backend.health()["status"] == "ok"
    trip(service.breakers.snapshot_store)
    health = backend.health()
    assert not service.ready()
    assert (health["status"], health["ready"], health["nats_connected"]) == (
        "degraded",
        False,
        True,
    )
    by_name = {b["name"]: b for b in health["breakers"]}
    assert by_name["event_store"]["state"] == "closed"
    assert by_name["snapshot_store"]["state"] == "open"
    assert by_name["snapshot_store"]["reason"] == "BackendUnavailableError: nats: timeout"
    metrics = samples(service.registry)
    assert metrics[("aggregate_breaker_state", frozenset({("breaker", "snapshot_store")}))] == 2
    assert metrics[("aggregate_breaker_state", frozenset({("breaker", "event_store")}))] == 0
    opened = frozenset({("breaker", "snapshot_store"), ("to", "open")})
    assert metrics[("aggregate_breaker_transitions_total", opened)] == 1


@pytest.mark.parametrize("tenant_labels", [True, False])
def test_quota_rejections_respect_the_tenant_label_switch(tenant_labels: bool) -> None:
    registry = CollectorRegistry()
    metrics = ProtectionMetrics(registry, tenant_labels=tenant_labels)
    metrics.quota_rejected("flooder", "rate")
    metrics.quota_rejected("flooder", "rate")
    metrics.quota_rejected("other", "in_flight")
    got = {
        labels: value
        for (name, labels), value in samples(registry).items()
        if name == "aggregate_quota_rejections_total"
    }
    if tenant_labels:
        assert got == {
            frozenset({("tenant_id", "flooder"), ("reason", "rate")}): 2,
            frozenset({("tenant_id", "other"), ("reason", "in_flight")}): 1,
        }
    else:
        assert got == {
            frozenset({("reason", "rate")}): 2,
            frozenset({("reason", "in_flight")}): 1,
        }


def test_load_limit_shed_count_and_queue_depth_are_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    metrics = ProtectionMetrics(registry)
    shed, queued, paced = [0], [0], [0]
    metrics.set_load_limit(64)
    metrics.set_shed_source(lambda: shed[0])
    metrics.set_queue_depth_source(lambda: queued[0])
    metrics.set_paced_source(lambda: paced[0])
    shed[0], queued[0], paced[0] = 7, 3, 5
    got = samples(registry)
    assert got[("aggregate_load_in_flight_limit", frozenset())] == 64
    assert got[("aggregate_load_shed_total", frozenset())] == 7
    assert got[("aggregate_quota_paced_total", frozenset())] == 5
    assert got[("aggregate_command_queue_depth", frozenset())] == 3


def test_breaker_settings_come_from_the_settings() -> None:
    service = Service(Settings(breaker_failure_threshold=7, breaker_open_ms=1234))
    assert service.breakers.event_store.settings == BreakerSettings(7, 1.234)
