"""Spans of the gRPC adapter: one server span per call, one ``command`` span per streamed
command (the span tree is described in ``aggregate.adapters.tracing``).

Only used when tracing is on: the server wraps the service's methods with ``traced`` once,
when it is built, and ``SubmitCommands`` opens ``command_span`` per command.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from aggregate.adapters.grpc import convert

if TYPE_CHECKING:
    from collections.abc import Iterator

    from grpclib._typing import IServerMethodFunc
    from grpclib.server import Stream
    from opentelemetry.trace import Span, Tracer

COMMAND_SPAN = "command"

_PROPAGATOR = TraceContextTextMapPropagator()
# OpenTelemetry's RPC conventions: on the server side only these codes make a span an error
# (the others are the client's mistake or a business outcome).
_SERVER_ERRORS = frozenset(
    {
        "UNKNOWN",
        "DEADLINE_EXCEEDED",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
    }
)


def _finish(span: Span, status: Status) -> None:
    span.set_attribute("rpc.grpc.status_code", status.value)
    if status.name in _SERVER_ERRORS:
        span.set_status(StatusCode.ERROR, status.name)


def traced(tracer: Tracer, path: str, method: IServerMethodFunc) -> IServerMethodFunc:
    """``method`` (served at ``path``, ``/package.Service/Method``) inside a server span that
    continues the caller's ``traceparent``/``tracestate`` and is current while it runs."""
    name = path.lstrip("/")
    service, _, rpc = name.partition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}

    async def traced_method(stream: Stream[Any, Any]) -> None:
        metadata = stream.metadata.items() if stream.metadata is not None else None
        parent = _PROPAGATOR.extract(convert.metadata_headers(metadata))
        with tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await method(stream)
            except GRPCError as exc:
                _finish(span, exc.status)
                raise
            except asyncio.CancelledError:
                _finish(span, Status.CANCELLED)
                raise
            except Exception:
                _finish(span, Status.UNKNOWN)  # what grpclib answers
                raise
            _finish(span, Status.OK)

    return traced_method


@contextmanager
def command_span(tracer: Tracer) -> Iterator[Span]:
    """The span of one command of a ``SubmitCommands`` stream (current inside the block);
    ``record_outcome`` says how it ended."""
    with tracer.start_as_current_span(
        COMMAND_SPAN, record_exception=False, set_status_on_exception=False
    ) as span:
        yield span


def record_outcome(span: Span, code: str) -> None:
    """The status name a command got (``OK`` or the gRPC status name) on its span."""
    span.set_attribute("rpc.grpc.status_code", Status[code].value)
    if code in _SERVER_ERRORS:
        span.set_status(StatusCode.ERROR, code)
