"""What tracing costs on the command path, per call, in microseconds (CPU-bound, one process).

    .venv/bin/python bench/tracing_cost.py [--commands 20000]

1. The hooks alone: a handler step's span with tracing off (no tracer: a branch and a
   reused null context), the OpenTelemetry API's no-op tracer for comparison, and an SDK
   span (batch processor, exporter that drops) with tracing on.
2. Whole commands through ``CommandHandler.handle`` on the in-memory store (warm cache, a
   Deposit per call) under asyncio: no tracer, and an SDK tracer with the command span
   opened as the gRPC adapter opens it (propagator extract, server span, request context
   from the span; then decide and append), best of 5 rounds each. ``--off-only`` runs the
   no-tracer loop alone, also on a tree without tracing, for a before/after comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import timeit
import uuid
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import Command
from aggregate.domain.ids import AggregateKey, uuid7
from aggregate.programs.base import AggregateTypeSpec
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram, StaticTypes
from specs import bank

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan

TYPE = "bank-account"
HEADERS = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


class DropExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def sdk_tracer() -> tuple[TracerProvider, trace.Tracer]:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(DropExporter()))
    return provider, provider.get_tracer("bench")


def per_call_us(statement: object, number: int) -> float:
    best = min(timeit.repeat(statement, number=number, repeat=5))  # type: ignore[arg-type]
    return best / number * 1e6


def hooks(number: int) -> None:
    null = contextlib.nullcontext()
    no_tracer = None

    def off() -> None:
        span = null if no_tracer is None else None
        with span:  # type: ignore[union-attr]
            pass

    noop = trace.NoOpTracer()

    def noop_api() -> None:
        with noop.start_as_current_span("decide"):
            pass

    provider, tracer = sdk_tracer()

    def sdk() -> None:
        with tracer.start_as_current_span("decide"):
            pass

    print("per span (enter + exit), µs:")
    print(f"  tracing off (no tracer)        {per_call_us(off, number):7.3f}")
    print(f"  OpenTelemetry no-op API        {per_call_us(noop_api, number):7.3f}")
    print(f"  SDK span, batch processor      {per_call_us(sdk, number):7.3f}")
    provider.shutdown()


def make_handler(tracer: trace.Tracer | None) -> CommandHandler:
    program = FunctionProgram(TYPE, bank.decide, bank.apply)
    return CommandHandler(
        store=InMemoryEventStore(),
        types=StaticTypes({TYPE: AggregateTypeSpec(TYPE, program)}),
        settings=HandlerSettings(retry_backoff_s=0, snapshot_threshold=0),
        **({"tracer": tracer} if tracer is not None else {}),  # --off-only runs on old code
    )


async def commands(tracer: trace.Tracer | None, count: int) -> float:
    handler = make_handler(tracer)
    key = AggregateKey("acme", TYPE, uuid7())
    base = RequestContext.new()
    await handler.handle(Command(key, uuid7(), {"type": "OpenAccount", "owner": "a"}, base))
    propagator = TraceContextTextMapPropagator()
    if tracer is not None:
        from aggregate.adapters.tracing import request_context
    deposits = [uuid.UUID(int=uuid7().int) for _ in range(count)]
    started = time.process_time()
    for command_id in deposits:
        payload = {"type": "Deposit", "amount": 1}
        if tracer is None:
            context = RequestContext.from_headers(HEADERS)
            await handler.handle(Command(key, command_id, payload, context))
        else:
            parent = propagator.extract(HEADERS)
            with tracer.start_as_current_span("command", context=parent, kind=SpanKind.SERVER):
                context = request_context(RequestContext.from_headers(HEADERS))
                await handler.handle(Command(key, command_id, payload, context))
    return (time.process_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--off-only", action="store_true", help="whole commands, no tracer")
    args = parser.parse_args()
    if args.off_only:
        off = min(asyncio.run(commands(None, args.commands)) for _ in range(5))
        print(f"per command, no tracer (CPU µs, best of 5): {off:.1f}")
        return
    hooks(100_000)
    provider, tracer = sdk_tracer()
    off = min(asyncio.run(commands(None, args.commands)) for _ in range(5))
    on = min(asyncio.run(commands(tracer, args.commands)) for _ in range(5))
    provider.shutdown()
    print("per command through CommandHandler.handle (CPU µs, best of 5):")
    print(f"  tracing off                    {off:7.1f}")
    print(f"  tracing on (3 spans)           {on:7.1f}   (+{on - off:.1f})")


if __name__ == "__main__":
    main()
