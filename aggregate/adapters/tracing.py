"""OpenTelemetry spans of the command path (DESIGN §8), through ``opentelemetry-api``.

Tracing is on only when an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, read into ``Settings`` like every setting):
``open_tracing`` then builds a ``TracerProvider`` of the OpenTelemetry SDK for this service
alone (never the process-global one, as the metrics use their own registry), which exports
finished spans in batches over OTLP/HTTP from a background thread. With no endpoint there
is no tracer at all: each hook on the command path is one ``is None`` test, which costs less
than the API's no-op tracer would.

The spans (few, fixed names; ids and types are attributes):

- ``aggregate.gateway.v1.CommandService/<method>`` (kind SERVER), one per gRPC call, a child
  of the caller's ``traceparent`` and ``tracestate`` (a new trace without them). For
  ``SubmitCommand`` it is the command's span; a ``SubmitCommands`` stream has a ``command``
  span per command under its own (``aggregate.adapters.grpc.tracing``).
- ``load`` (a cache miss: snapshot plus events), ``decide``, ``apply`` (events replayed) and
  ``append`` (the conditional publish): children of the command's span, from the handler.
- ``snapshot write``: a child of the span that offered the snapshot, written later by the
  snapshotter on the Trio thread (the parent travels with the offer, since context
  variables do not cross threads).

A command's ``RequestContext`` takes its trace from the command's span
(``request_context``): the stored NATS message's ``traceparent`` names that span, and its
``trace-id`` header, the body's ``trace_id`` and the log lines' trace id are the span's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from aggregate.config import Settings
    from aggregate.domain.context import RequestContext

log = logging.getLogger(__name__)

TRACER_NAME = "aggregate"
"""The instrumentation scope of every span the service makes."""


def request_context(base: RequestContext) -> RequestContext:
    """``base`` moved into the trace of the current span (the command's): its
    ``traceparent`` names that span, its ``tracestate`` is the span's. ``base`` itself when
    no valid span is current."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return base
    traceparent = (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}"
        f"-{span_context.trace_flags:02x}"
    )
    return base.with_trace(traceparent, span_context.trace_state.to_header())


@dataclass(frozen=True)
class Tracing:
    """The service's tracer and the provider behind it (``open_tracing``)."""

    provider: TracerProvider
    tracer: trace.Tracer
    timeout_s: float
    """Deadline of one export; ``shutdown`` takes at most about this long."""

    def shutdown(self) -> None:
        """Export the spans still queued and stop the exporter. Blocks (the export is an
        HTTP request): call it from a worker thread. Never raises."""
        try:
            self.provider.shutdown()
        except Exception:
            log.warning("tracing: the final span export failed", exc_info=True)


def open_tracing(settings: Settings, *, version: str) -> Tracing | None:
    """The service's tracing: None when no OTLP endpoint is configured (nothing is made,
    nothing exported), else an SDK provider exporting to ``settings.otlp_traces_url``.

    The SDK itself reads the other standard variables: ``OTEL_EXPORTER_OTLP_HEADERS`` (and
    the certificate and compression ones), ``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_TRACES_SAMPLER[_ARG]`` and ``OTEL_BSP_*`` (batching).
    """
    url = settings.otlp_traces_url
    if url is None:
        return None
    # Imported only when on: the SDK and the exporter (requests) cost start-up time.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    timeout_s = settings.trace_export_timeout_seconds
    resource = Resource.create(
        {
            "service.name": settings.otel_service_name,
            "service.version": version,
            "service.instance.id": settings.shard_id,
        }
    )
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    exporter = OTLPSpanExporter(endpoint=url, timeout=timeout_s)
    provider.add_span_processor(
        BatchSpanProcessor(exporter, export_timeout_millis=settings.trace_export_timeout_ms)
    )
    log.info("tracing: exporting spans to %s (OTLP/HTTP)", url)
    return Tracing(provider, provider.get_tracer(TRACER_NAME, version), timeout_s)
