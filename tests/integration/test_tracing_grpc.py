"""Span parentage across gRPC → handler → NATS headers: a real gRPC server (grpclib and
grpcio clients), the JetStream event store on a real nats-server, and the OpenTelemetry SDK
with an in-memory exporter (DESIGN §8)."""

from __future__ import annotations

import json
import logging
import uuid
from typing import TYPE_CHECKING

import anyio
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from aggregate.adapters.jetstream import JetStreamEventStore
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.gateway.v1 import aggregate_pb2 as pb
from aggregate.logcontext import current_log_fields
from aggregate.programs.base import AggregateTypeSpec
from aggregate.testing.programs import FunctionProgram, StaticTypes
from specs import bank
from tests.integration.grpc_harness import (
    CLIENT_KINDS,
    TYPE,
    bank_handler,
    command,
    open_client,
    open_server,
)
from tests.unit.test_tracing import Spans, parent_id, span_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from nats.aio.client import Client as NATS
    from opentelemetry.sdk.trace import ReadableSpan

    from aggregate.adapters.grpc import CommandServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
TRACESTATE = "vendor=abc,other=x1"
SUBMIT = "aggregate.gateway.v1.CommandService/SubmitCommand"
STREAM = "aggregate.gateway.v1.CommandService/SubmitCommands"
GET = "aggregate.gateway.v1.CommandService/GetAggregate"
ACME_TP = {"x-tenant-id": "acme", "traceparent": TRACEPARENT}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def spans() -> Iterator[Spans]:
    recorder = Spans()
    yield recorder
    recorder.provider.shutdown()


@pytest.fixture
async def store(shared_nc: NATS, event_stream: str) -> AsyncIterator[JetStreamEventStore]:
    jetstream = JetStreamEventStore(shared_nc, stream=event_stream)
    yield jetstream
    await jetstream.aclose()


@pytest.fixture
async def server(store: JetStreamEventStore, spans: Spans) -> AsyncIterator[CommandServer]:
    program = FunctionProgram(TYPE, bank.decide, bank.apply)
    handler = CommandHandler(
        store=store,
        types=StaticTypes({TYPE: AggregateTypeSpec(TYPE, program)}),
        settings=HandlerSettings(retry_backoff_s=0),
        tracer=spans.tracer,
    )
    async with open_server(handler, tracer=spans.tracer) as srv:
        yield srv


def hex_span(span: ReadableSpan) -> str:
    return f"{span_id(span):016x}"


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


async def stored_message(
    nc: NATS, stream: str, tenant: str, aggregate_id: str
) -> tuple[dict[str, str], dict[str, object]]:
    subject = f"tenant.{tenant}.aggregate.{TYPE}.{aggregate_id}"
    raw = await nc.jetstream().get_last_msg(stream, subject)
    return dict(raw.headers or {}), json.loads(raw.data)


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_the_command_span_continues_the_callers_trace_and_names_the_stored_message(
    server: CommandServer, spans: Spans, shared_nc: NATS, event_stream: str, kind: str
) -> None:
    metadata = {"x-tenant-id": "acme", "traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    with anyio.fail_after(20), open_client(kind, server.address) as client:
        reply = await client.submit(command({"type": "OpenAccount", "owner": "ann"}), metadata)
        assert reply.status == "OK", reply.message
        aggregate_id = reply.response.aggregate_id
        headers, body = await stored_message(shared_nc, event_stream, "acme", aggregate_id)

    server_span = spans.one(SUBMIT)
    assert server_span.kind is SpanKind.SERVER
    assert hex_trace(server_span) == TRACE_ID
    assert server_span.parent is not None
    assert server_span.parent.is_remote
    assert f"{server_span.parent.span_id:016x}" == CALLER_SPAN
    assert hex_span(server_span) != CALLER_SPAN
    assert server_span.context is not None
    assert server_span.context.trace_state.to_header() == TRACESTATE
    attributes = dict(server_span.attributes or {})
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.method"] == "SubmitCommand"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["aggregate.id"] == aggregate_id
    assert attributes["aggregate.tenant_id"] == "acme"

    for name in ("load", "decide", "append"):
        child = spans.one(name)
        assert parent_id(child) == span_id(server_span), name
        assert hex_trace(child) == TRACE_ID, name

    # The stored message carries the command span's context, not the caller's.
    assert headers["traceparent"] == f"00-{TRACE_ID}-{hex_span(server_span)}-01"
    assert headers["tracestate"] == TRACESTATE
    assert headers["trace-id"] == TRACE_ID
    assert body["trace_id"] == TRACE_ID
    # The echo names the server's span: same trace, the caller can link to it.
    assert reply.initial_metadata["traceparent"] == headers["traceparent"]


async def test_without_a_traceparent_the_server_span_starts_the_trace(
    server: CommandServer, spans: Spans, shared_nc: NATS, event_stream: str
) -> None:
    with anyio.fail_after(20), open_client("grpclib", server.address) as client:
        reply = await client.submit(
            command({"type": "OpenAccount", "owner": "bo"}), {"x-tenant-id": "acme"}
        )
        assert reply.status == "OK", reply.message
        headers, body = await stored_message(
            shared_nc, event_stream, "acme", reply.response.aggregate_id
        )
    server_span = spans.one(SUBMIT)
    assert server_span.parent is None
    trace_id = hex_trace(server_span)
    assert server_span.context is not None
    flags = f"{server_span.context.trace_flags:02x}"  # sampled (and random, W3C level 2)
    assert headers["traceparent"] == f"00-{trace_id}-{hex_span(server_span)}-{flags}"
    assert headers["trace-id"] == trace_id
    assert "tracestate" not in headers
    assert body["trace_id"] == trace_id
    assert reply.initial_metadata["traceparent"].split("-")[1] == trace_id
    assert parent_id(spans.one("append")) == span_id(server_span)


async def test_each_streamed_command_has_a_span_that_names_its_message(
    server: CommandServer, spans: Spans, shared_nc: NATS, event_stream: str
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(2)]
    requests = [
        command({"type": "OpenAccount", "owner": f"o{i}"}, aggregate_id=aggregate_id)
        for i, aggregate_id in enumerate(ids)
    ]
    metadata = {"x-tenant-id": "acme", "traceparent": TRACEPARENT}
    with anyio.fail_after(20), open_client("grpclib", server.address) as client:
        reply = await client.submit_many(requests, metadata)
        assert reply.status == "OK", reply.message
        assert [r.WhichOneof("result") for r in reply.results] == ["response", "response"]
        stored = [await stored_message(shared_nc, event_stream, "acme", i) for i in ids]

    stream_span = spans.one(STREAM)
    assert stream_span.parent is not None
    assert f"{stream_span.parent.span_id:016x}" == CALLER_SPAN
    commands = spans.named("command")
    assert len(commands) == 2
    assert {parent_id(c) for c in commands} == {span_id(stream_span)}
    by_aggregate = {dict(c.attributes or {})["aggregate.id"]: c for c in commands}
    for aggregate_id, (headers, _) in zip(ids, stored, strict=True):
        own = by_aggregate[aggregate_id]
        assert headers["traceparent"] == f"00-{TRACE_ID}-{hex_span(own)}-01"
        assert dict(own.attributes or {})["rpc.grpc.status_code"] == 0
    decides = spans.named("decide")
    assert {parent_id(d) for d in decides} == {span_id(c) for c in commands}


@pytest.mark.parametrize(
    ("payload", "code", "error"),
    [
        ({"type": "Withdraw", "amount": 5}, 9, False),  # a rejection: FAILED_PRECONDITION
        ({"type": "Explode"}, 13, True),  # a crash: INTERNAL
    ],
)
async def test_server_spans_are_errors_only_for_server_failures(
    spans: Spans, payload: dict[str, object], code: int, error: bool
) -> None:
    handler = bank_handler(raising=True)
    async with open_server(handler, tracer=spans.tracer) as srv:
        with anyio.fail_after(20), open_client("grpcio", srv.address) as client:
            reply = await client.submit(
                command(payload, aggregate_id=str(uuid.uuid4())), {"x-tenant-id": "acme"}
            )
            missing = await client.get(
                pb.GetAggregateRequest(aggregate_type=TYPE, aggregate_id=str(uuid.uuid4())),
                {"x-tenant-id": "acme"},
            )
    assert reply.status != "OK"
    assert missing.status == "NOT_FOUND"
    submit = spans.one(SUBMIT)
    assert dict(submit.attributes or {})["rpc.grpc.status_code"] == code
    assert (submit.status.status_code is StatusCode.ERROR) is error
    get = spans.one(GET)
    assert dict(get.attributes or {})["rpc.grpc.status_code"] == 5
    assert get.status.status_code is StatusCode.UNSET


async def test_a_read_has_its_server_span_with_the_aggregate_ids(
    server: CommandServer, spans: Spans
) -> None:
    with anyio.fail_after(20), open_client("grpclib", server.address) as client:
        opened = await client.submit(command({"type": "OpenAccount", "owner": "cy"}), ACME_TP)
        aggregate_id = opened.response.aggregate_id
        request = pb.GetAggregateRequest(aggregate_type=TYPE, aggregate_id=aggregate_id)
        assert (await client.get(request, ACME_TP)).status == "OK"
    get = spans.one(GET)
    assert get.parent is not None
    assert f"{get.parent.span_id:016x}" == CALLER_SPAN
    attributes = dict(get.attributes or {})
    assert attributes["aggregate.id"] == aggregate_id
    assert attributes["rpc.grpc.status_code"] == 0
    assert "aggregate.command_id" not in attributes


class _FieldsHandler(logging.Handler):
    """Keeps the log-context fields bound when each record was emitted."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[dict[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.fields.append(dict(current_log_fields()))


async def test_log_lines_carry_the_spans_trace_id_when_the_caller_sent_none(
    spans: Spans,
) -> None:
    handler = _FieldsHandler()
    service_log = logging.getLogger("aggregate.adapters.grpc.service")
    service_log.addHandler(handler)
    try:
        async with open_server(bank_handler(raising=True), tracer=spans.tracer) as srv:
            with anyio.fail_after(20), open_client("grpclib", srv.address) as client:
                reply = await client.submit(
                    command({"type": "Explode"}, aggregate_id=str(uuid.uuid4())),
                    {"x-tenant-id": "acme"},
                )
    finally:
        service_log.removeHandler(handler)
    assert reply.status == "INTERNAL"
    trace_id = hex_trace(spans.one(SUBMIT))
    assert handler.fields, "the internal error was not logged"
    assert {fields["trace_id"] for fields in handler.fields} == {trace_id}
