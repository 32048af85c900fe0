"""A small synchronous gRPC client for people and scripts (the CLI's ``submit``/``get``).

grpclib is asyncio-only, so each call runs its own short asyncio loop; nothing here is on
the service's command path.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import grpclib.client
import grpclib.exceptions

from aggregate.gateway.v1 import aggregate_grpc
from aggregate.gateway.v1 import aggregate_pb2 as pb


@dataclass(frozen=True)
class CallFailedError(Exception):
    """The service answered with a gRPC error status (``status`` is its name)."""

    status: str
    message: str

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class ServiceUnreachableError(Exception):
    """The service could not be reached at all."""


def _metadata(tenant_id: str | None, correlation_id: str | None) -> dict[str, str]:
    metadata = {}
    if tenant_id:
        metadata["x-tenant-id"] = tenant_id
    if correlation_id:
        metadata["x-correlation-id"] = correlation_id
    return metadata


async def _call(
    host: str, port: int, timeout_s: float, method: str, request: Any, meta: Any
) -> Any:
    channel = grpclib.client.Channel(host, port)
    try:
        stub = aggregate_grpc.CommandServiceStub(channel)
        return await getattr(stub, method)(request, timeout=timeout_s, metadata=meta)
    except grpclib.exceptions.GRPCError as exc:
        raise CallFailedError(exc.status.name, exc.message or "") from None
    except (TimeoutError, OSError) as exc:
        raise ServiceUnreachableError(f"cannot reach the service at {host}:{port}: {exc}") from exc
    finally:
        channel.close()


def event_json(event: pb.Event) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "version": event.version,
        "payload": json.loads(event.payload_json or "{}"),
        "timestamp": event.timestamp,
    }


def submit(
    host: str,
    port: int,
    *,
    aggregate_type: str,
    aggregate_id: str,
    command_id: str,
    payload: dict[str, Any],
    tenant_id: str | None = None,
    expected_version: int | None = None,
    correlation_id: str | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Submit one command; the response as a JSON-ready dict.

    Raises:
        CallFailedError: the service refused the command (rejection, conflict, ...).
        ServiceUnreachableError: no answer from ``host:port``.
    """
    request = pb.SubmitCommandRequest(
        command_id=command_id,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        payload_json=json.dumps(payload),
    )
    if expected_version is not None:
        request.expected_version = expected_version
    reply = asyncio.run(
        _call(host, port, timeout, "SubmitCommand", request, _metadata(tenant_id, correlation_id))
    )
    return {
        "tenant_id": reply.tenant_id,
        "aggregate_type": reply.aggregate_type,
        "aggregate_id": reply.aggregate_id,
        "command_id": reply.command_id,
        "version": reply.version,
        "duplicate": reply.duplicate,
        "position": reply.position,
        "events": [event_json(e) for e in reply.events],
    }


def get(
    host: str,
    port: int,
    *,
    aggregate_type: str,
    aggregate_id: str,
    tenant_id: str | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """An aggregate's state and version.

    Raises:
        CallFailedError: e.g. NOT_FOUND.
        ServiceUnreachableError: no answer from ``host:port``.
    """
    request = pb.GetAggregateRequest(aggregate_type=aggregate_type, aggregate_id=aggregate_id)
    view = asyncio.run(
        _call(host, port, timeout, "GetAggregate", request, _metadata(tenant_id, None))
    )
    return {
        "tenant_id": view.tenant_id,
        "aggregate_type": view.aggregate_type,
        "aggregate_id": view.aggregate_id,
        "version": view.version,
        "position": view.position,
        "state": json.loads(view.state_json or "{}"),
    }
