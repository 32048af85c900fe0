"""``QueryAggregates`` for people and scripts (the CLI's ``query``): pages of views, one
asyncio loop for the whole walk, each view handed to a callback as a JSON-ready dict."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import grpclib.client
import grpclib.exceptions

from aggregate.adapters.grpc.client import CallFailedError, ServiceUnreachableError
from aggregate.gateway.v1 import query_grpc
from aggregate.gateway.v1 import query_pb2 as qpb

if TYPE_CHECKING:
    from collections.abc import Callable


async def _walk(
    host: str,
    port: int,
    request: qpb.QueryAggregatesRequest,
    *,
    every_page: bool,
    metadata: dict[str, str],
    call_timeout_s: float,
    emit: Callable[[dict[str, Any]], None],
) -> tuple[str, int]:
    channel = grpclib.client.Channel(host, port)
    try:
        stub = query_grpc.QueryServiceStub(channel)
        while True:
            reply = await stub.QueryAggregates(request, timeout=call_timeout_s, metadata=metadata)
            for view in reply.aggregates:
                emit(
                    {
                        "aggregate_id": view.aggregate_id,
                        "version": view.version,
                        "position": view.position,
                        "state": json.loads(view.state_json or "{}"),
                    }
                )
            if not every_page or not reply.next_page_token:
                return reply.next_page_token, reply.position
            request.page_token = reply.next_page_token
    except grpclib.exceptions.GRPCError as exc:
        raise CallFailedError(exc.status.name, exc.message or "") from None
    except (TimeoutError, OSError) as exc:
        raise ServiceUnreachableError(f"cannot reach the service at {host}:{port}: {exc}") from exc
    finally:
        channel.close()


def query(
    host: str,
    port: int,
    *,
    aggregate_type: str,
    filter_text: str,
    order_by: str = "",
    page_size: int = 0,
    page_token: str = "",
    min_position: int = 0,
    every_page: bool = False,
    tenant_id: str | None = None,
    timeout: float = 10.0,
    emit: Callable[[dict[str, Any]], None],
) -> tuple[str, int]:
    """Ask for one page (``every_page``: all of them, following the tokens); each view goes
    to ``emit``. Returns the next page token ('' at the end) and the last answer's position.

    Raises:
        CallFailedError: the service refused the query (bad filter, token, ...).
        ServiceUnreachableError: no answer from ``host:port``.
    """
    request = qpb.QueryAggregatesRequest(
        aggregate_type=aggregate_type,
        filter=filter_text,
        order_by=order_by,
        page_size=page_size,
        page_token=page_token,
        min_position=min_position,
    )
    metadata = {"x-tenant-id": tenant_id} if tenant_id else {}
    return asyncio.run(
        _walk(
            host,
            port,
            request,
            every_page=every_page,
            metadata=metadata,
            call_timeout_s=timeout,
            emit=emit,
        )
    )
