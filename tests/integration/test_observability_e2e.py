"""Tracing and metrics of the real service process: spans exported over OTLP/HTTP to a real
receiver (gRPC server span → handler → NATS message → snapshot write on the Trio thread),
and a real ``/metrics`` scrape holding every name the monitoring assets use."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import anyio
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.grpc_harness import command, open_client
from tests.integration.otlp_receiver import ReceivedSpan, running_receiver
from tests.integration.service_harness import ServiceProcess, running_service
from tests.unit.test_monitoring import FUTURE_METRICS, used_metric_names

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.integration.otlp_receiver import OtlpReceiver

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4737"
CALLER_SPAN = "10f067aa0ba902b8"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
SUBMIT = "aggregate.gateway.v1.CommandService/SubmitCommand"
SERVER_KIND = 2  # SPAN_KIND_SERVER in OTLP
ACME = {"x-tenant-id": "acme"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with running_receiver() as otlp:
        yield otlp


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver
) -> Iterator[ServiceProcess]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # the SDK's batch delay (ms), read by the SDK
        "AGGREGATE_SNAPSHOT_THRESHOLD": "1",
    }
    with running_service(tmp_path_factory.mktemp("obs"), env=env) as svc:
        yield svc


def scrape(service: ServiceProcess) -> tuple[set[str], dict[tuple[str, frozenset], float]]:
    """Every sample name the exposition can hold (also of families with no sample yet),
    and the samples."""
    status, text = service.http_call("GET", "/metrics")
    assert status == 200
    names: set[str] = set()
    samples = {}
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        for sample in family.samples:
            names.add(sample.name)
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return names, samples


async def stored_headers(service: ServiceProcess, aggregate_id: str) -> dict[str, str]:
    url = (service.storage / "embedded-nats.url").read_text().strip()
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        subject = f"tenant.acme.aggregate.bank-account.{aggregate_id}"
        raw = await nc.jetstream().get_last_msg("AGGREGATE_EVENTS", subject)
        return dict(raw.headers or {})
    finally:
        await nc.close()


def of_trace(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name and s.trace_id == TRACE_ID]


async def test_a_commands_spans_reach_the_collector_as_one_tree(
    service: ServiceProcess, receiver: OtlpReceiver
) -> None:
    metadata = {**ACME, "traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    with anyio.fail_after(60), open_client("grpcio", service.grpc) as client:
        reply = await client.submit(command({"type": "OpenAccount", "owner": "ann"}), metadata)
        assert reply.status == "OK", reply.message
        headers = await stored_headers(service, reply.response.aggregate_id)
        spans = await anyio.to_thread.run_sync(
            lambda: receiver.wait_for(
                lambda got: bool(of_trace(got, SUBMIT) and of_trace(got, "snapshot write"))
            )
        )
    (server,) = of_trace(spans, SUBMIT)
    assert server.kind == SERVER_KIND
    assert server.parent_span_id == CALLER_SPAN
    assert server.span_id != CALLER_SPAN
    assert server.trace_state == "vendor=abc"
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["aggregate.id"] == reply.response.aggregate_id
    assert server.resource["service.name"] == "aggregate"
    assert server.resource["service.instance.id"] == "local"
    for name in ("load", "decide", "append"):
        (child,) = of_trace(spans, name)
        assert child.parent_span_id == server.span_id, name
    # Offered on the island thread, written on the Trio thread, still under the command.
    (write,) = of_trace(spans, "snapshot write")
    assert write.parent_span_id == server.span_id
    assert write.attributes["aggregate.version"] == 1
    assert headers["traceparent"] == f"00-{TRACE_ID}-{server.span_id}-01"
    assert headers["tracestate"] == "vendor=abc"


async def test_the_scrape_holds_process_build_nats_and_read_metrics(
    service: ServiceProcess,
) -> None:
    with anyio.fail_after(60), open_client("grpclib", service.grpc) as client:
        reply = await client.submit(command({"type": "OpenAccount", "owner": "bo"}), ACME)
        assert reply.status == "OK", reply.message
        request = pb.GetAggregateRequest(
            aggregate_type="bank-account", aggregate_id=reply.response.aggregate_id
        )
        assert (await client.get(request, ACME)).status == "OK"
        missing = pb.GetAggregateRequest(
            aggregate_type="bank-account", aggregate_id=str(uuid.uuid4())
        )
        assert (await client.get(missing, ACME)).status == "NOT_FOUND"
    names, samples = scrape(service)
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "python_gc_collections_total",
        "python_info",
    ):
        assert name in names, name
    builds = [labels for name, labels in samples if name == "aggregate_build_info"]
    assert len(builds) == 1
    assert dict(builds[0])["version"]
    assert samples[("aggregate_nats_connected", frozenset())] == 1
    read = {"method": "GetAggregate", "aggregate_type": "bank-account", "tenant_id": "acme"}
    assert samples[("aggregate_reads_total", frozenset({**read, "outcome": "ok"}.items()))] >= 1
    assert (
        samples[("aggregate_reads_total", frozenset({**read, "outcome": "not_found"}.items()))] >= 1
    )
    assert samples[("aggregate_read_duration_seconds_count", frozenset(read.items()))] >= 2


def test_every_metric_the_dashboard_and_alerts_use_is_served_or_documented_as_future(
    service: ServiceProcess,
) -> None:
    names, _ = scrape(service)
    used = used_metric_names()
    missing = {name: sorted(where) for name, where in used.items() if name not in names}
    assert set(missing) == FUTURE_METRICS, missing
