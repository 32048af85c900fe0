"""The ``aggregate.gateway.v1.CommandService`` servicer (grpclib) over a ``CommandHandler``.

Runs on the asyncio island (DESIGN §3): grpclib calls it there, and the handler's anyio code
runs natively on the same loop. Counters here are plain integers because every method runs
on that one loop thread; call nothing here from another thread.

Every call: tenant from ``x-tenant-id`` metadata (DESIGN §6), request context from metadata
(``RequestContext.from_headers``) echoed in the initial response metadata, the command's
log lines bound to that context, and every error turned into a status through the one table
in ``aggregate.domain.status`` (INTERNAL details go to the log, never to the client).
"""

from __future__ import annotations

import contextlib
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aggregate.adapters.access_log import AccessLog
from aggregate.adapters.grpc import convert
from aggregate.adapters.grpc.convert import Failure
from aggregate.adapters.grpc.pacing import RefusalPacer
from aggregate.adapters.grpc.streaming import CommandStream
from aggregate.adapters.metrics import UNKNOWN_TYPE_LABEL
from aggregate.adapters.tracing import request_context
from aggregate.application.observe import NoCommandObserver
from aggregate.config.values import AccessLogMode
from aggregate.domain.context import TENANT_HEADER, RequestContext
from aggregate.domain.errors import (
    AggregateError,
    InvalidArgumentError,
    OverloadedError,
    QuotaExceededError,
    TenantAccessDeniedError,
    TenantUnavailableError,
)
from aggregate.domain.ids import DEFAULT_TENANT, canonical_uuid_text
from aggregate.domain.status import (
    new_error_id,
    outcome_of,
    public_message,
    retry_after_ms_of,
    status_of,
)
from aggregate.gateway.v1 import aggregate_grpc
from aggregate.logcontext import log_context

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from grpclib.metadata import Deadline
    from grpclib.server import Stream
    from opentelemetry.trace import Tracer

    from aggregate.application.handler import CommandHandler
    from aggregate.application.observe import CommandObserver
    from aggregate.config import Settings
    from aggregate.domain.envelopes import Command, CommandResult
    from aggregate.gateway.v1 import aggregate_pb2 as pb

log = logging.getLogger(__name__)

COMMAND_SERVICE = "aggregate.gateway.v1.CommandService"
"""The full name of the service, as health checks and reflection know it."""

_INVALID_TENANT_LABEL = "<invalid>"
_MISSING_TENANT_LABEL = "<missing>"


@dataclass(frozen=True, slots=True)
class GrpcOptions:
    """What the gRPC adapter needs from ``Settings`` (``from_settings``), plus its own knobs.

    ``stream_window`` bounds the commands outstanding (read but not yet answered) on one
    ``SubmitCommands`` stream; the server stops reading that stream until results go out.
    ``settle_timeout`` (seconds) bounds the drain's wait for each client to acknowledge
    (HTTP/2 PING) the last responses before it gets GOAWAY. ``access_log`` and
    ``access_log_sample_every``: see ``aggregate.adapters.access_log``. ``max_message_bytes``,
    ``max_header_list_bytes`` and ``max_concurrent_streams`` are the transport's limits
    (``aggregate.adapters.grpc.transport``); ``pace_refusals_per_second`` is each tenant's
    refusal budget on its dedicated connections and its streams
    (``aggregate.adapters.grpc.pacing``, 0: off). ``request_limits`` bound the payload's
    JSON and the metadata map of every command.
    """

    host: str = "127.0.0.1"
    port: int = 0
    max_payload_bytes: int = 1_048_576
    max_in_flight: int = 1024
    multi_tenant: bool = True
    default_tenant_id: str | None = None
    stream_window: int = 64
    settle_timeout: float = 1.0
    access_log: AccessLogMode = AccessLogMode.OFF
    access_log_sample_every: int = 100
    max_message_bytes: int = 4_194_304
    max_header_list_bytes: int = 16_384
    max_concurrent_streams: int = 100
    request_limits: convert.RequestLimits = field(default_factory=convert.RequestLimits)
    overload_retry_after_ms: int = 100
    pace_refusals_per_second: int = 10

    def __post_init__(self) -> None:
        if not self.multi_tenant and self.default_tenant_id is None:
            object.__setattr__(self, "default_tenant_id", DEFAULT_TENANT)
        counts = (
            self.stream_window,
            self.max_in_flight,
            self.max_payload_bytes,
            self.max_message_bytes,
            self.max_header_list_bytes,
            self.max_concurrent_streams,
        )
        if min(counts) < 1:
            raise ValueError(
                "stream_window, max_in_flight and the max_*_bytes and max_concurrent_streams "
                "limits must be >= 1"
            )
        if self.pace_refusals_per_second < 0:
            raise ValueError("pace_refusals_per_second must be >= 0 (0: no pacing)")

    @classmethod
    def from_settings(cls, settings: Settings, *, stream_window: int = 64) -> GrpcOptions:
        """Options from the service's ``Settings`` (bind address from ``grpc_addr``)."""
        host, port = settings.grpc_bind
        return cls(
            host=host,
            port=port,
            max_payload_bytes=settings.max_payload_bytes,
            max_in_flight=settings.max_in_flight,
            multi_tenant=settings.multi_tenant,
            default_tenant_id=settings.default_tenant_id,
            stream_window=stream_window,
            access_log=settings.access_log,
            access_log_sample_every=settings.access_log_sample_every,
            max_message_bytes=settings.max_message_bytes,
            max_header_list_bytes=settings.grpc_max_header_list_bytes,
            max_concurrent_streams=settings.grpc_max_concurrent_streams,
            overload_retry_after_ms=settings.overload_retry_after_ms,
            pace_refusals_per_second=settings.quota_pace_refusals_per_second,
            request_limits=convert.RequestLimits(
                max_json_depth=settings.max_json_depth,
                max_json_int_digits=settings.max_json_int_digits,
                max_metadata_entries=settings.max_metadata_entries,
                max_metadata_key_bytes=settings.max_metadata_key_bytes,
                max_metadata_value_bytes=settings.max_metadata_value_bytes,
                max_metadata_bytes=settings.max_metadata_bytes,
            ),
        )


class CommandService(aggregate_grpc.CommandServiceBase):
    """``SubmitCommand``, ``SubmitCommands`` and ``GetAggregate`` over a ``CommandHandler``."""

    def __init__(
        self,
        handler: CommandHandler,
        options: GrpcOptions,
        *,
        observer: CommandObserver | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.handler = handler
        self.options = options
        self.observer: CommandObserver = observer or NoCommandObserver()
        self.access_log = AccessLog(options.access_log, options.access_log_sample_every)
        self.tracer = tracer
        """Tracing on: the server wraps each method in a server span, and a call's context
        takes its trace from that span (``aggregate.adapters.tracing``)."""
        self._in_flight = 0
        self.shed = 0
        """Commands refused because the node was at ``max_in_flight`` (load shedding)."""
        self.pacer = RefusalPacer.of(options.pace_refusals_per_second)
        """Each tenant's budget of quota refusals read at full speed, shared by its
        dedicated connections and its ``SubmitCommands`` streams."""
        self._streams: set[CommandStream] = set()
        self._stopping = False
        self.owner_address: Callable[[str], str | None] = _no_address
        """The dialable ``host:port`` of a shard (from the shard directory), for the
        ``x-owner-addr`` trailer of UNAVAILABLE; None when unknown."""
        self.settle: Callable[[], Awaitable[None]] = _nothing_to_settle
        """Awaited before a drain ends an open stream with UNAVAILABLE: the server makes
        sure the client has processed the results sent before (HTTP/2 PING round trip), as
        grpclib's client drops buffered results when the stream's end arrives with them."""

    @property
    def in_flight(self) -> int:
        """Commands being handled right now (unary and stream items)."""
        return self._in_flight

    def stop_streams(self) -> None:
        """Start of a drain: every open ``SubmitCommands`` stream (and any opened later)
        stops reading requests, answers the ones it has read, then ends with UNAVAILABLE."""
        self._stopping = True
        for command_stream in list(self._streams):
            command_stream.stop_reading()

    # --- RPCs ---

    async def SubmitCommand(
        self, stream: Stream[pb.SubmitCommandRequest, pb.SubmitCommandResponse]
    ) -> None:
        """Handle one command. Cancellation (client gone, deadline): as ``handle``; the
        command may or may not have been appended."""
        tenant_id, context = await self.open_call(stream)
        try:
            request = await convert.receive(stream)
            if request is None:
                raise GRPCError(Status.INVALID_ARGUMENT, "SubmitCommand needs a request message")
        except BaseException:
            self.handler.release(tenant_id)  # its early check's promise (early.py)
            raise
        outcome = await self.run_command(
            request, tenant_id, context, stream.deadline, promised=True
        )
        if isinstance(outcome, Failure):
            if outcome.trailers():
                await convert.send_failure(stream, outcome)
                return
            raise outcome.grpc_error()
        await stream.send_message(convert.response_message(outcome))

    async def SubmitCommands(
        self, stream: Stream[pb.SubmitCommandRequest, pb.SubmitCommandResult]
    ) -> None:
        """Pipelined commands: results in request order, errors in place (see
        ``CommandStream``)."""
        tenant_id, context = await self.open_call(stream)
        command_stream = CommandStream(self, stream, tenant_id, context)
        self._streams.add(command_stream)
        if self._stopping:
            command_stream.stop_reading()
        try:
            await command_stream.run()
        finally:
            self._streams.discard(command_stream)

    async def GetAggregate(self, stream: Stream[pb.GetAggregateRequest, pb.AggregateView]) -> None:
        """An aggregate's state and version; NOT_FOUND when it has no events."""
        tenant_id, context = await self.open_call(stream)
        request = await convert.receive(stream)
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "GetAggregate needs a request message")
        started = time.perf_counter()
        outcome = "cancelled"
        key = None
        refused: Failure | None = None  # a refusal that says when to retry (open breaker)
        try:
            with log_context(
                tenant_id=tenant_id,
                correlation_id=context.correlation_id,
                trace_id=context.trace_id,
                request_id=context.request_id,
            ):
                try:
                    key = convert.key_from_get_request(request, tenant_id=tenant_id)
                    view = await self.handler.get(key)
                except Exception as exc:
                    outcome = outcome_of(exc)
                    refused = self.failure_of(exc, tenant_id, context)
                    if not refused.trailers():
                        raise refused.grpc_error() from None
            if refused is None:
                outcome = "ok"
        except BaseException:
            if outcome == "cancelled" and stream.deadline and not stream.deadline.time_remaining():
                outcome = "deadline_exceeded"
            raise
        finally:
            type_label = self.type_label(request.aggregate_type)
            seconds = time.perf_counter() - started
            self.observer.read_finished("GetAggregate", tenant_id, type_label, outcome, seconds)
            if self.access_log.enabled:
                self.access_log.write(
                    "GetAggregate",
                    tenant_id=tenant_id,
                    aggregate_type=type_label,
                    aggregate_id=str(key.aggregate_id) if key is not None else None,
                    command_id=None,
                    outcome=outcome,
                    seconds=seconds,
                    context=context,
                )
        if refused is not None:
            await convert.send_failure(stream, refused)
            return
        await stream.send_message(convert.view_message(view))

    # --- shared by unary calls and stream items ---

    async def run_command(
        self,
        request: pb.SubmitCommandRequest,
        tenant_id: str,
        context: RequestContext,
        deadline: Deadline | None,
        method: str = "SubmitCommand",
        *,
        promised: bool = False,
    ) -> CommandResult | Failure:
        """Validate and handle one command; errors come back as a ``Failure``. ``method``
        names the call in the access log. ``promised``: the call's early check
        (``aggregate.adapters.grpc.early``) may hold a quota promise, released here, just
        before the command's own check and admission (no await in between).

        Cancellation propagates (the command may or may not have been appended).
        """
        started = time.perf_counter()
        type_label = self.type_label(request.aggregate_type)
        self.observer.command_started(tenant_id, type_label)
        outcome = "cancelled"
        # Logged only in its canonical form: a malformed id is the client's text, unbounded.
        command_id = canonical_uuid_text(request.command_id)
        command: Command | None = None
        try:
            with log_context(
                tenant_id=tenant_id,
                correlation_id=context.correlation_id,
                trace_id=context.trace_id,
                request_id=context.request_id,
                command_id=command_id,
            ):
                try:
                    if promised:
                        self.handler.release(tenant_id)
                    self.handler.precheck(tenant_id)
                    command = convert.command_from_request(
                        request,
                        tenant_id=tenant_id,
                        context=context,
                        max_payload_bytes=self.options.max_payload_bytes,
                        limits=self.options.request_limits,
                    )
                    # Bind the id only when the server made it: a client's is bound above.
                    generated = (
                        log_context(command_id=str(command.command_id))
                        if command_id is None
                        else contextlib.nullcontext()
                    )
                    with generated, self._admit():
                        result = await self.handler.handle(command)
                except Exception as exc:
                    outcome = outcome_of(exc)
                    made = (
                        log_context(command_id=str(command.command_id))
                        if command is not None and command_id is None
                        else contextlib.nullcontext()
                    )
                    with made:
                        return self.failure_of(exc, tenant_id, context)
                outcome = "ok"
                return result
        except BaseException:
            if deadline is not None and not deadline.time_remaining():
                outcome = "deadline_exceeded"
            raise
        finally:
            seconds = time.perf_counter() - started
            self.observer.command_finished(tenant_id, type_label, outcome, seconds)
            if self.access_log.enabled:
                self.access_log.write(
                    method,
                    tenant_id=tenant_id,
                    aggregate_type=type_label,
                    # Only ids that validated: what the client sent may be anything.
                    aggregate_id=str(command.key.aggregate_id) if command is not None else None,
                    command_id=str(command.command_id) if command is not None else None,
                    outcome=outcome,
                    seconds=seconds,
                    context=context,
                )

    def failure_of(self, exc: Exception, tenant_id: str, context: RequestContext) -> Failure:
        """The status name and public message of an error; reports tenant-level refusals to
        the observer. An INTERNAL error gets a fresh error id: the client's message names
        it, and the log line with the detail (message, stack, request context) carries it
        as ``error_id``."""
        code, _ = status_of(exc)
        error_id = new_error_id() if code == "INTERNAL" else None
        message = public_message(exc, error_id=error_id)
        trailers: tuple[tuple[str, str], ...] = ()
        if isinstance(exc, TenantUnavailableError):
            if exc.owner and exc.owner not in message:
                message = f"{message} (shard {exc.owner!r} owns the tenant)"
            if exc.owner:
                trailers = owner_trailers(exc.owner, self.owner_address(exc.owner))
            self.observer.tenant_error(tenant_id, "unavailable")
        elif isinstance(exc, TenantAccessDeniedError):
            self.observer.tenant_error(tenant_id, "access_denied")
        if error_id is not None:
            log.error(
                "internal error %s: %s",
                error_id,
                exc,
                exc_info=exc,
                extra={
                    "error_id": error_id,
                    "tenant_id": tenant_id,
                    "correlation_id": context.correlation_id,
                    "trace_id": context.trace_id,
                    "request_id": context.request_id,
                },
            )
        quota_rate = exc.rate if isinstance(exc, QuotaExceededError) else None
        return Failure(code, message, retry_after_ms_of(exc), trailers, quota_rate)

    # --- helpers ---

    async def open_call(self, stream: Stream[Any, Any]) -> tuple[str, RequestContext]:
        """Context from metadata, echoed at once in the initial metadata; then the tenant.

        Raises:
            GRPCError: INVALID_ARGUMENT for a missing or malformed tenant id.
        """
        headers = convert.metadata_headers(
            stream.metadata.items() if stream.metadata is not None else None
        )
        context = RequestContext.from_headers(headers)
        if self.tracer is not None:
            context = request_context(context)
        await stream.send_initial_metadata(metadata=context.response_headers())
        try:
            tenant_id = convert.resolve_tenant(
                headers,
                multi_tenant=self.options.multi_tenant,
                default_tenant_id=self.options.default_tenant_id,
            )
        except InvalidArgumentError as exc:
            missing = not headers.get(TENANT_HEADER)
            label = _MISSING_TENANT_LABEL if missing else _INVALID_TENANT_LABEL
            self.observer.tenant_error(label, "missing_tenant_id" if missing else "invalid")
            raise GRPCError(Status.INVALID_ARGUMENT, exc.message) from None
        return tenant_id, context

    def type_label(self, aggregate_type: str) -> str:
        """The metrics label of a type: the name when configured (bounded cardinality)."""
        try:
            self.handler.types.get(aggregate_type)
        except AggregateError:
            return UNKNOWN_TYPE_LABEL
        return aggregate_type

    def check_capacity(self) -> None:
        """Refuse a new command when ``max_in_flight`` commands are being handled.

        Raises:
            OverloadedError: at the limit (counted in ``shed``).
        """
        limit = self.options.max_in_flight
        if self._in_flight >= limit:
            self.shed += 1
            retry = self.options.overload_retry_after_ms
            raise OverloadedError(
                f"this server is handling {limit} commands already (max_in_flight); "
                f"retry after {retry} ms or on another node",
                retry_after_ms=retry,
            )

    @contextmanager
    def _admit(self) -> Iterator[None]:
        """Count one command in flight on this server.

        Raises:
            OverloadedError: ``max_in_flight`` commands are already being handled (shed at
                once, never queued).
        """
        self.check_capacity()
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1


OWNER_SHARD_HEADER = "x-owner-shard"
OWNER_ADDR_HEADER = "x-owner-addr"


def owner_trailers(shard: str, addr: str | None) -> tuple[tuple[str, str], ...]:
    """The trailers that tell a client where a tenant went: its shard id, and the
    shard's dialable address when the directory knows it. Both values come validated
    (shard ids are tokens, addresses passed ``validate_dial_address``)."""
    if addr is None:
        return ((OWNER_SHARD_HEADER, shard),)
    return ((OWNER_SHARD_HEADER, shard), (OWNER_ADDR_HEADER, addr))


def _no_address(shard: str) -> str | None:
    return None


async def _nothing_to_settle() -> None:
    pass
