"""The CLI's ``watch``: follow a tenant's changes over ``WatchAggregates``, one JSON object
a change. grpclib is asyncio-only, so the watch runs its own asyncio loop; nothing here is
on the service's command path."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import grpclib.client
import grpclib.exceptions

from aggregate.adapters.grpc.client import (
    CallFailedError,
    ServiceUnreachableError,
    _metadata,
    event_json,
)
from aggregate.gateway.v1 import query_grpc
from aggregate.gateway.v1 import query_pb2 as qpb

if TYPE_CHECKING:
    from collections.abc import Callable

RESUME_HEADER = "x-resume-position"


def change_json(change: qpb.AggregateChange) -> dict[str, Any]:
    out: dict[str, Any] = {
        "aggregate_type": change.aggregate_type,
        "aggregate_id": change.aggregate_id,
        "version": change.version,
        "position": change.position,
        "command_id": change.command_id,
        "events": [event_json(e) for e in change.events],
    }
    if change.state_json:
        out["state"] = json.loads(change.state_json)
    return out


async def _watch(
    host: str,
    port: int,
    request: qpb.WatchAggregatesRequest,
    meta: dict[str, str],
    on_change: Callable[[dict[str, Any]], None],
    count: int | None,
    timeout_s: float,
) -> None:
    channel = grpclib.client.Channel(host, port)
    last = request.from_position
    seen = 0
    try:
        stub = query_grpc.QueryServiceStub(channel)
        async with stub.WatchAggregates.open(metadata=meta) as stream:
            try:
                await asyncio.wait_for(stream.send_message(request, end=True), timeout_s)
                await asyncio.wait_for(stream.recv_initial_metadata(), timeout_s)
                while count is None or seen < count:
                    change = await stream.recv_message()
                    if change is None:
                        return
                    on_change(change_json(change))
                    last = change.position
                    seen += 1
                await stream.cancel()
            except grpclib.exceptions.GRPCError as exc:
                trailing = dict(stream.trailing_metadata or {})
                value = trailing.get(RESUME_HEADER, str(last))
                resume = value.decode() if isinstance(value, bytes) else str(value)
                message = f"{exc.message or ''} (resume with --from {resume})"
                raise CallFailedError(exc.status.name, message) from None
    except grpclib.exceptions.GRPCError as exc:
        raise CallFailedError(exc.status.name, exc.message or "") from None
    except (TimeoutError, OSError) as exc:
        raise ServiceUnreachableError(f"cannot reach the service at {host}:{port}: {exc}") from exc
    finally:
        channel.close()


def watch(
    host: str,
    port: int,
    *,
    aggregate_type: str,
    on_change: Callable[[dict[str, Any]], None],
    tenant_id: str | None = None,
    aggregate_id: str = "",
    filter_text: str = "",
    from_position: int = 0,
    include_state: bool = False,
    count: int | None = None,
    timeout: float = 10.0,
) -> None:
    """Follow the changes (``on_change`` gets each as a JSON-ready dict) until ``count``
    arrived, the server ended the watch, or the caller interrupts.

    Raises:
        CallFailedError: the server refused or ended the watch; the message says the
            position to resume from.
        ServiceUnreachableError: no answer from ``host:port`` within ``timeout``.
    """
    request = qpb.WatchAggregatesRequest(
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        filter=filter_text,
        from_position=from_position,
        include_state=include_state,
    )
    asyncio.run(_watch(host, port, request, _metadata(tenant_id, None), on_change, count, timeout))
