"""The access log: one ``info`` line per gRPC call on the logger ``aggregate.access``.

Each line carries ``method``, ``tenant_id``, ``aggregate_type``, ``aggregate_id``,
``outcome`` (``ok`` or the lower-case status, as the ``aggregate_commands_total`` label),
``status`` (the gRPC status name), ``duration_ms``, ``command_id``, ``correlation_id``,
``trace_id`` and ``request_id``. Ids the client sent that did not validate are left out
(never echoed); a ``SubmitCommands`` stream logs one line per command.

``AccessLogMode`` chooses the calls: ``off`` (the default), ``on``, or ``sampled``: every
call that did not end OK and one in ``sample_every`` of those that did. A line costs about
25 µs of CPU (the JSON line and its write), a few per cent of a command's CPU on a small
machine, which is why it is off unless asked for; off, a call pays one comparison.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aggregate.config.values import AccessLogMode

if TYPE_CHECKING:
    from aggregate.domain.context import RequestContext

ACCESS_LOGGER = "aggregate.access"
"""The access log's logger name (filter or route its lines by it)."""

log = logging.getLogger(ACCESS_LOGGER)


class AccessLog:
    """Writes the access-log lines of one server. Not thread-safe: the gRPC servicer calls
    it from its one event loop thread."""

    __slots__ = ("_count", "_every", "enabled", "mode")

    def __init__(self, mode: AccessLogMode = AccessLogMode.OFF, sample_every: int = 100) -> None:
        if sample_every < 1:
            raise ValueError("sample_every must be >= 1")
        self.mode = AccessLogMode(mode)
        self.enabled = self.mode is not AccessLogMode.OFF
        """False: ``write`` would log nothing; callers skip gathering its fields."""
        self._every = sample_every
        self._count = 0

    def write(
        self,
        method: str,
        *,
        tenant_id: str,
        aggregate_type: str,
        aggregate_id: str | None,
        command_id: str | None,
        outcome: str,
        seconds: float,
        context: RequestContext,
    ) -> None:
        """Log the line of one call, when the mode (and the sample) wants it."""
        if not self.enabled:
            return
        if self.mode is AccessLogMode.SAMPLED and outcome == "ok":
            self._count += 1
            if self._count < self._every:
                return
            self._count = 0
        if not log.isEnabledFor(logging.INFO):
            return
        status = outcome.upper()
        duration_ms = round(seconds * 1000, 3)
        fields: dict[str, object] = {
            "method": method,
            "tenant_id": tenant_id,
            "aggregate_type": aggregate_type,
            "outcome": outcome,
            "status": status,
            "duration_ms": duration_ms,
            "correlation_id": context.correlation_id,
            "trace_id": context.trace_id,
            "request_id": context.request_id,
        }
        if aggregate_id is not None:
            fields["aggregate_id"] = aggregate_id
        if command_id is not None:
            fields["command_id"] = command_id
        log.info("%s %s %.3f ms", method, status, duration_ms, extra=fields)
