"""Refusing a command from its request headers, before grpclib runs a call for it.

A tenant flooding past its quota sends thousands of commands a second that are all refused.
Through grpclib's whole call (a stream, a task and a request handler, the response
metadata, the message read and decoded, the log context, the error path) each refusal took
~200 µs of the island's CPU, so a flood of refusals queued the other tenants' commands
behind it on the one event loop. ``EarlyRefusals`` is called by the transport
(``aggregate.adapters.grpc.transport``, ``early``) with the header list of every valid
request, as it arrives, and answers from the headers alone what the command path would
refuse anyway:

- only ``SubmitCommand`` (a ``SubmitCommands`` stream answers each command in place, and
  reads take no quota), and not while the server drains (the drain answers UNAVAILABLE);
- the tenant from ``x-tenant-id`` as the command path resolves it; a missing or invalid
  tenant id is left to the command path (INVALID_ARGUMENT);
- ``CommandHandler.precheck_promised``: an open breaker is UNAVAILABLE, a tenant over its
  quota RESOURCE_EXHAUSTED, each with ``retry-after-ms``. A call that passes holds a
  promise of its tenant's token (and in-flight slot) until the command path reaches the
  quota's own admission (``CommandService.run_command`` releases it): requests that arrive
  together in one read do not all pass on the same token, only to be refused late;
- then the node's in-flight limit (load shedding, RESOURCE_EXHAUSTED with
  ``retry-after-ms``), in the command path's order.

The answer is the one the command path gives: response metadata echoing the request context
(``x-correlation-id``, ``traceparent``, ``x-request-id``, generated when missing or
invalid), then the status, the message and the ``retry-after-ms`` trailer. It is counted as
the command path counts it (``aggregate_quota_rejections_total`` by the quota itself,
``aggregate_commands_total`` with the outcome, under ``aggregate_type`` ``_unknown`` since
the request is not read, the access log line when the access log is on), and logged no
further: no log line per refusal, no span when tracing is on. Whatever is not refused here
goes the normal way, where ``handle`` decides again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from grpclib.const import Status

from aggregate.adapters.grpc import convert
from aggregate.adapters.grpc.transport import Refusal
from aggregate.adapters.metrics import UNKNOWN_TYPE_LABEL
from aggregate.domain.context import (
    CORRELATION_HEADER,
    REQUEST_ID_HEADER,
    TENANT_HEADER,
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
    RequestContext,
)
from aggregate.domain.errors import (
    CircuitOpenError,
    InvalidArgumentError,
    OverloadedError,
    QuotaExceededError,
)
from aggregate.domain.status import (
    RETRY_AFTER_HEADER,
    public_message,
    retry_after_ms_of,
    status_of,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from aggregate.adapters.grpc.service import CommandService
    from aggregate.adapters.grpc.transport import Headers

log = logging.getLogger(__name__)

SUBMIT_COMMAND_PATH = "/aggregate.gateway.v1.CommandService/SubmitCommand"
_WANTED = frozenset(
    {
        TENANT_HEADER,
        CORRELATION_HEADER,
        "correlation-id",
        TRACEPARENT_HEADER,
        TRACESTATE_HEADER,
        REQUEST_ID_HEADER,
    }
)
_EARLY = (CircuitOpenError, QuotaExceededError, OverloadedError)


class EarlyRefusals:
    """The transport's ``early`` check for ``service``; ``draining`` says whether the
    server has begun a drain. Runs on the island loop, like the service."""

    def __init__(self, service: CommandService, draining: Callable[[], bool]) -> None:
        self.service = service
        self._draining = draining
        self.refused = 0
        """Calls answered here."""
        self._failed = False

    def __call__(self, headers: Headers) -> Refusal | None:
        """The refusal of this request, or None to let the command path run it. Never
        raises: an unexpected error leaves the call to the command path (one log line)."""
        try:
            return self._check(headers)
        except Exception:
            if not self._failed:
                self._failed = True
                log.exception("the early refusal check failed; calls take the normal path")
            return None

    def _check(self, headers: Headers) -> Refusal | None:
        path: str | None = None
        values: dict[str, str] = {}
        for name, value in headers:
            if name == ":path":
                path = value
            elif name in _WANTED and name not in values:  # first value wins, as in metadata
                values[name] = value
        if path != SUBMIT_COMMAND_PATH or self._draining():
            return None
        service = self.service
        options = service.options
        try:
            tenant_id = convert.resolve_tenant(
                values,
                multi_tenant=options.multi_tenant,
                default_tenant_id=options.default_tenant_id,
            )
        except InvalidArgumentError:
            return None  # the command path answers it, naming what is wrong
        started = time.perf_counter()
        try:
            service.handler.precheck_promised(tenant_id)
        except _EARLY as exc:
            return self._refusal(exc, tenant_id, values, started)
        try:
            service.check_capacity()
        except OverloadedError as exc:
            service.handler.release(tenant_id)
            return self._refusal(exc, tenant_id, values, started)
        return None

    def _refusal(
        self, exc: Exception, tenant_id: str, values: dict[str, str], started: float
    ) -> Refusal:
        self.refused += 1
        code, _ = status_of(exc)
        outcome = code.lower()
        context = RequestContext.from_headers(values)
        service = self.service
        service.observer.command_started(tenant_id, UNKNOWN_TYPE_LABEL)
        service.observer.command_finished(
            tenant_id, UNKNOWN_TYPE_LABEL, outcome, time.perf_counter() - started
        )
        if service.access_log.enabled:
            service.access_log.write(
                "SubmitCommand",
                tenant_id=tenant_id,
                aggregate_type=UNKNOWN_TYPE_LABEL,
                aggregate_id=None,
                command_id=None,
                outcome=outcome,
                seconds=time.perf_counter() - started,
                context=context,
            )
        retry = retry_after_ms_of(exc)
        return Refusal(
            Status[code],
            public_message(exc),
            initial=tuple(context.response_headers().items()),
            trailers=((RETRY_AFTER_HEADER, str(retry)),) if retry is not None else (),
            quiet=True,
            quota_tenant=tenant_id if isinstance(exc, QuotaExceededError) else None,
            quota_rate=exc.rate if isinstance(exc, QuotaExceededError) else 0.0,
        )
