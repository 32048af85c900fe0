"""Request context: tenant, correlation, trace and request ids (DESIGN §8).

This module owns the header names and the extract/inject rules for gRPC metadata, HTTP
headers and NATS headers, so every transport carries the same context the same way.
Values that are missing or invalid are generated, never rejected: context is for tracing,
not for authorisation.
"""

from __future__ import annotations

import dataclasses
import os
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

TENANT_HEADER = "x-tenant-id"
NATS_TENANT_HEADER = "tenant-id"
CORRELATION_HEADER = "x-correlation-id"
NATS_CORRELATION_HEADERS = ("x-correlation-id", "correlation-id")
TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"
MAX_TRACESTATE_CHARS = 512
NATS_TRACE_ID_HEADER = "trace-id"
REQUEST_ID_HEADER = "x-request-id"

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_SAFE_ID = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
# W3C tracestate: list members of printable ASCII; the tracer (when on) parses the members.
_TRACESTATE = re.compile(rf"[\x20-\x7e]{{1,{MAX_TRACESTATE_CHARS}}}")


def new_traceparent() -> str:
    """A fresh W3C traceparent (version 00, sampled)."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def valid_traceparent(value: str | None) -> bool:
    """True for a W3C version-00 traceparent whose trace and span ids are not all zeros."""
    if not value:
        return False
    match = _TRACEPARENT.fullmatch(value)
    return bool(match) and set(match.group(1)) != {"0"} and set(match.group(2)) != {"0"}  # type: ignore[union-attr]


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The context of one request, present on every NATS message and log line it causes."""

    correlation_id: str
    traceparent: str
    request_id: str
    tracestate: str = ""
    """The caller's W3C ``tracestate``, kept only beside a valid ``traceparent``."""

    @property
    def trace_id(self) -> str:
        """The 32-hex trace id inside ``traceparent`` (NATS ``trace-id`` header)."""
        return self.traceparent.split("-")[1]

    @classmethod
    def new(cls) -> RequestContext:
        """A context with every id generated."""
        return cls.from_values(None, None, None)

    @classmethod
    def from_values(
        cls,
        correlation_id: str | None,
        traceparent: str | None,
        request_id: str | None,
        tracestate: str | None = None,
    ) -> RequestContext:
        """Keep the given ids that are valid; generate the rest. A ``tracestate`` goes
        with its ``traceparent``: dropped when that is generated, too long or not ASCII."""
        if not correlation_id or not _SAFE_ID.fullmatch(correlation_id):
            correlation_id = str(uuid.uuid4())
        if not valid_traceparent(traceparent):
            traceparent = new_traceparent()
            tracestate = None
        if not request_id or not _SAFE_ID.fullmatch(request_id):
            request_id = str(uuid.uuid4())
        if not tracestate or not _TRACESTATE.fullmatch(tracestate):
            tracestate = ""
        return cls(correlation_id, traceparent, request_id, tracestate)  # type: ignore[arg-type]

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RequestContext:
        """Extract from gRPC metadata or HTTP headers (names compared in lower case)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        return cls.from_values(
            lowered.get(CORRELATION_HEADER) or lowered.get("correlation-id"),
            lowered.get(TRACEPARENT_HEADER),
            lowered.get(REQUEST_ID_HEADER),
            lowered.get(TRACESTATE_HEADER),
        )

    def with_trace(self, traceparent: str, tracestate: str) -> RequestContext:
        """This context in the trace of another span (the command's, when tracing is on)."""
        return dataclasses.replace(self, traceparent=traceparent, tracestate=tracestate)

    def response_headers(self) -> dict[str, str]:
        """Headers echoed back in gRPC response metadata and HTTP responses."""
        return {
            CORRELATION_HEADER: self.correlation_id,
            TRACEPARENT_HEADER: self.traceparent,
            REQUEST_ID_HEADER: self.request_id,
        }

    def nats_headers(self, tenant_id: str) -> dict[str, str]:
        """The context headers every NATS message of this request carries (DESIGN §4.2)."""
        headers = {NATS_TENANT_HEADER: tenant_id, TRACEPARENT_HEADER: self.traceparent}
        for name in NATS_CORRELATION_HEADERS:
            headers[name] = self.correlation_id
        headers[NATS_TRACE_ID_HEADER] = self.trace_id
        headers[REQUEST_ID_HEADER] = self.request_id
        if self.tracestate:
            headers[TRACESTATE_HEADER] = self.tracestate
        return headers
