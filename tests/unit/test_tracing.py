"""Tracing without the network: the trace context rules, the handler's and the snapshotter's
spans (OpenTelemetry SDK, in-memory exporter), and tracing off when no endpoint is set."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from aggregate.adapters.snapshotter import Snapshotter
from aggregate.adapters.tracing import open_tracing, request_context
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.config import Settings, load_settings
from aggregate.domain.context import MAX_TRACESTATE_CHARS, RequestContext
from aggregate.domain.envelopes import Command
from aggregate.domain.errors import VersionConflictError
from aggregate.domain.ids import AggregateKey, uuid7
from aggregate.programs.base import AggregateTypeSpec
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram, StaticTypes
from specs import bank
from tests.unit.test_snapshotter import RecordingStore, make_key, make_snapshot

TYPE = "bank-account"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Spans:
    """An SDK provider of its own that keeps finished spans in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(shutdown_on_exit=False)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span


@pytest.fixture
def spans() -> Iterator[Spans]:
    recorder = Spans()
    yield recorder
    recorder.provider.shutdown()


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


# --- the context rules --------------------------------------------------------------------


def test_tracestate_travels_with_a_valid_traceparent_to_the_nats_headers() -> None:
    ctx = RequestContext.from_headers({"traceparent": TRACEPARENT, "TraceState": "vendor=abc"})
    assert ctx.tracestate == "vendor=abc"
    assert ctx.nats_headers("acme")["tracestate"] == "vendor=abc"


@pytest.mark.parametrize(
    "headers",
    [
        {"tracestate": "vendor=abc"},  # no traceparent: a new trace has no state
        {"traceparent": "00-" + "0" * 32 + "-" + PARENT_ID + "-01", "tracestate": "vendor=abc"},
        {"traceparent": TRACEPARENT, "tracestate": "v=" + "x" * MAX_TRACESTATE_CHARS},
        {"traceparent": TRACEPARENT, "tracestate": "vendor=\u00e9t\u00e9"},
        {"traceparent": TRACEPARENT, "tracestate": "vendor=a\nb"},
    ],
)
def test_tracestate_is_dropped_without_its_traceparent_or_when_malformed(
    headers: dict[str, str],
) -> None:
    ctx = RequestContext.from_headers(headers)
    assert ctx.tracestate == ""
    assert "tracestate" not in ctx.nats_headers("acme")


def test_request_context_takes_the_current_span_and_keeps_the_other_ids(spans: Spans) -> None:
    base = RequestContext.from_values("corr-1", TRACEPARENT, "req-1", "vendor=abc")
    assert request_context(base) is base  # no span: unchanged
    parent = trace.set_span_in_context(
        trace.NonRecordingSpan(
            trace.SpanContext(
                int(TRACE_ID, 16),
                int(PARENT_ID, 16),
                is_remote=True,
                trace_flags=trace.TraceFlags(1),
                trace_state=trace.TraceState([("vendor", "abc")]),
            )
        )
    )
    with spans.tracer.start_as_current_span("command", context=parent) as span:
        moved = request_context(base)
    own = span.get_span_context()
    assert moved.traceparent == f"00-{TRACE_ID}-{own.span_id:016x}-01"
    assert own.span_id != int(PARENT_ID, 16)
    assert moved.trace_id == TRACE_ID
    assert moved.tracestate == "vendor=abc"
    assert (moved.correlation_id, moved.request_id) == ("corr-1", "req-1")
    assert moved.nats_headers("acme")["trace-id"] == TRACE_ID


# --- on and off ---------------------------------------------------------------------------


def test_no_endpoint_means_no_tracing_at_all() -> None:
    assert open_tracing(Settings(), version="1") is None
    assert open_tracing(load_settings({"OTEL_SERVICE_NAME": "x"}), version="1") is None


def test_an_endpoint_turns_tracing_on_with_a_provider_of_its_own() -> None:
    settings = load_settings(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1/",
            "AGGREGATE_TRACE_EXPORT_TIMEOUT_MS": "200",
        }
    )
    tracing = open_tracing(settings, version="1.2.3")
    assert tracing is not None
    try:
        assert tracing.provider is not trace.get_tracer_provider()
        resource = tracing.provider.resource.attributes
        assert resource["service.name"] == "aggregate"
        assert resource["service.version"] == "1.2.3"
        with tracing.tracer.start_as_current_span("x") as span:
            assert span.get_span_context().is_valid
            assert span.is_recording()
    finally:
        # Nothing listens on port 1: the final export fails (within its deadline) and
        # is only logged.
        tracing.shutdown()


# --- the handler's spans ------------------------------------------------------------------


def make_handler(spans: Spans, store: Any = None) -> CommandHandler:
    types = StaticTypes(
        {TYPE: AggregateTypeSpec(TYPE, FunctionProgram(TYPE, bank.decide, bank.apply))}
    )
    return CommandHandler(
        store=store or InMemoryEventStore(),
        types=types,
        settings=HandlerSettings(retry_backoff_s=0),
        tracer=spans.tracer,
    )


def command(key: AggregateKey, payload: dict[str, Any]) -> Command:
    return Command(key, uuid7(), payload, RequestContext.new())


@pytest.mark.trio
async def test_handler_steps_are_children_of_the_command_span(spans: Spans) -> None:
    store = InMemoryEventStore()
    key = AggregateKey("acme", TYPE, uuid7())
    handler = make_handler(spans, store)
    open_account = command(key, {"type": "OpenAccount", "owner": "ann"})
    with spans.tracer.start_as_current_span("command") as parent:
        await handler.handle(open_account)
    root = spans.one("command")
    assert root.attributes is not None
    assert root.attributes["aggregate.tenant_id"] == "acme"
    assert root.attributes["aggregate.id"] == str(key.aggregate_id)
    assert root.attributes["aggregate.command_id"] == str(open_account.command_id)
    for name in ("load", "decide", "append"):
        assert parent_id(spans.one(name)) == parent.get_span_context().span_id, name
    assert not spans.named("apply")  # a new aggregate replays nothing

    # A second node (cold cache) replays the event: apply under load, under the command.
    spans.exporter.clear()
    with spans.tracer.start_as_current_span("command"):
        await make_handler(spans, store).handle(command(key, {"type": "Deposit", "amount": 5}))
    load = spans.one("load")
    assert parent_id(load) == span_id(spans.one("command"))
    assert parent_id(spans.one("apply")) == span_id(load)


@pytest.mark.trio
async def test_a_conflicting_append_is_an_error_span_and_the_retry_replays(spans: Spans) -> None:
    store = InMemoryEventStore()
    key = AggregateKey("acme", TYPE, uuid7())
    stale = make_handler(spans, store)
    await stale.handle(command(key, {"type": "OpenAccount", "owner": "ann"}))
    await make_handler(spans, store).handle(command(key, {"type": "Deposit", "amount": 5}))
    spans.exporter.clear()
    with spans.tracer.start_as_current_span("command"):
        await stale.handle(command(key, {"type": "Deposit", "amount": 7}))
    appends = spans.named("append")
    assert [a.status.status_code for a in appends] == [StatusCode.ERROR, StatusCode.UNSET]
    assert appends[0].events[0].attributes is not None
    assert appends[0].events[0].attributes["exception.type"].endswith(VersionConflictError.__name__)
    assert len(spans.named("decide")) == 2
    assert parent_id(spans.one("apply")) == span_id(spans.one("command"))


@pytest.mark.trio
async def test_without_a_tracer_the_handler_makes_no_span(spans: Spans) -> None:
    types = StaticTypes(
        {TYPE: AggregateTypeSpec(TYPE, FunctionProgram(TYPE, bank.decide, bank.apply))}
    )
    handler = CommandHandler(store=InMemoryEventStore(), types=types)
    with spans.tracer.start_as_current_span("command"):
        await handler.handle(
            command(AggregateKey("acme", TYPE, uuid7()), {"type": "OpenAccount", "owner": "bo"})
        )
    assert [s.name for s in spans.finished()] == ["command"]
    assert spans.one("command").attributes == {}


# --- the snapshotter's spans --------------------------------------------------------------


@pytest.mark.trio
async def test_a_snapshot_write_is_a_child_of_the_span_that_offered_it_on_another_thread(
    spans: Spans,
) -> None:
    store = RecordingStore()
    snapshotter = Snapshotter(store, tracer=spans.tracer)  # type: ignore[arg-type]
    key = make_key()
    offered: dict[str, int] = {}

    def island_thread() -> None:
        with spans.tracer.start_as_current_span("command") as span:
            snapshotter.offer(make_snapshot(key, 3))
            offered["span"] = span.get_span_context().span_id
            offered["trace"] = span.get_span_context().trace_id

    async with trio.open_nursery() as nursery:
        await nursery.start(snapshotter.serve)
        thread = threading.Thread(target=island_thread)
        thread.start()
        await trio.to_thread.run_sync(thread.join)
        await store.wait_for(lambda: len(store.saved) == 1)
        nursery.cancel_scope.cancel()
    write = spans.one("snapshot write")
    assert parent_id(write) == offered["span"]
    assert write.context is not None
    assert write.context.trace_id == offered["trace"]
    assert write.attributes is not None
    assert write.attributes["aggregate.version"] == 3
