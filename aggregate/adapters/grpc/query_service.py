"""The ``aggregate.gateway.v1.QueryService`` servicer (grpclib): the read side's gRPC face.

Runs on the asyncio island beside ``CommandService`` and shares its call handling: tenant
from ``x-tenant-id`` metadata, request context echoed in the initial metadata, errors turned
into statuses through the one table in ``aggregate.domain.status``. A tenant this node does
not host is refused by the same tenant gate as commands (UNAVAILABLE naming the owner).

``QueryAggregates`` answers from the node's index (``queries``, an ``Indexer``); with the
index switched off it answers UNIMPLEMENTED. ``min_position`` waits within the call's
deadline (at most ``index_max_wait_ms``): DEADLINE_EXCEEDED when the index does not reach
it in time. ``WatchAggregates`` is served by ``WatchServer``
(``aggregate.adapters.grpc.watch_service``) once the service wires it; without it,
UNIMPLEMENTED.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aggregate.adapters.grpc import convert
from aggregate.domain.ids import validate_aggregate_type
from aggregate.domain.status import outcome_of
from aggregate.gateway.v1 import aggregate_pb2 as pb
from aggregate.gateway.v1 import query_grpc
from aggregate.gateway.v1 import query_pb2 as qpb
from aggregate.logcontext import log_context
from aggregate.query.plan import QueryRequest

if TYPE_CHECKING:
    from grpclib.metadata import Deadline
    from grpclib.server import Stream

    from aggregate.adapters.grpc.service import CommandService
    from aggregate.adapters.grpc.watch_service import WatchServer
    from aggregate.query.indexer import Indexer, QueryAnswer

QUERY_SERVICE = "aggregate.gateway.v1.QueryService"
"""The full name of the service, as health checks and reflection know it."""

WATCH_NOT_SERVED = "WatchAggregates is not served on this node (no change feed is wired)"
INDEX_OFF = "queries are switched off on this node (AGGREGATE_INDEX_ENABLED=false)"


class QueryService(query_grpc.QueryServiceBase):
    """``QueryAggregates`` over the node's index; ``WatchAggregates`` over its change feed."""

    def __init__(self, commands: CommandService, queries: Indexer | None = None) -> None:
        self.commands = commands
        self.queries = queries
        self.tracer = commands.tracer
        self.watches: WatchServer | None = None
        """Serves ``WatchAggregates`` once the service has wired the change feed."""

    async def QueryAggregates(
        self, stream: Stream[qpb.QueryAggregatesRequest, qpb.QueryAggregatesResponse]
    ) -> None:
        """One page of the views of a type (that match the filter), in order."""
        tenant_id, context = await self.commands.open_call(stream)
        request = await convert.receive(stream)
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "QueryAggregates needs a request message")
        if self.queries is None:
            raise GRPCError(Status.UNIMPLEMENTED, INDEX_OFF)
        started = time.perf_counter()
        outcome = "cancelled"
        try:
            with log_context(
                tenant_id=tenant_id,
                correlation_id=context.correlation_id,
                trace_id=context.trace_id,
                request_id=context.request_id,
            ):
                try:
                    answer = await self._answer(request, tenant_id, stream.deadline)
                except Exception as exc:
                    outcome = outcome_of(exc)
                    raise self.commands.failure_of(exc, tenant_id, context).grpc_error() from None
            outcome = "ok"
        finally:
            label = self.commands.type_label(request.aggregate_type)
            seconds = time.perf_counter() - started
            self.commands.observer.read_finished(
                "QueryAggregates", tenant_id, label, outcome, seconds
            )
        await stream.send_message(response_message(answer, tenant_id, request.aggregate_type))

    async def _answer(
        self, request: qpb.QueryAggregatesRequest, tenant_id: str, deadline: Deadline | None
    ) -> QueryAnswer:
        assert self.queries is not None
        aggregate_type = validate_aggregate_type(request.aggregate_type)
        handler = self.commands.handler
        handler.types.get(aggregate_type)  # UnknownAggregateTypeError: INVALID_ARGUMENT
        with handler.gate.admit(tenant_id):  # hosted here? (UNAVAILABLE naming the owner)
            pass
        remaining = deadline.time_remaining() if deadline is not None else None
        # Answer DEADLINE_EXCEEDED a little before the client gives up, so it gets a reason.
        timeout_s = (
            max(0.0, remaining - min(0.1, remaining / 10)) if remaining is not None else math.inf
        )
        return await self.queries.query(
            QueryRequest(
                tenant_id=tenant_id,
                aggregate_type=aggregate_type,
                filter=request.filter,
                order_by=request.order_by,
                page_size=request.page_size,
                page_token=request.page_token,
            ),
            min_position=request.min_position,
            timeout_s=timeout_s,
        )

    async def WatchAggregates(
        self, stream: Stream[qpb.WatchAggregatesRequest, qpb.AggregateChange]
    ) -> None:
        """The changes of a tenant's aggregates as they commit (``WatchServer.watch``);
        UNIMPLEMENTED where no change feed is wired."""
        if self.watches is not None:
            await self.watches.watch(stream)
            return
        await self.commands.open_call(stream)
        raise GRPCError(Status.UNIMPLEMENTED, WATCH_NOT_SERVED)


def response_message(
    answer: QueryAnswer, tenant_id: str, aggregate_type: str
) -> qpb.QueryAggregatesResponse:
    """A page as ``QueryAggregatesResponse``; each row's state is already compact JSON."""
    return qpb.QueryAggregatesResponse(
        aggregates=[
            pb.AggregateView(
                tenant_id=tenant_id,
                aggregate_type=aggregate_type,
                aggregate_id=row.aggregate_id,
                version=row.version,
                state_json=row.state,
                position=row.position,
            )
            for row in answer.rows
        ],
        next_page_token=answer.next_page_token,
        position=answer.position,
    )
