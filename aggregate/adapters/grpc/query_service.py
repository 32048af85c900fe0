"""The ``aggregate.gateway.v1.QueryService`` servicer (grpclib): the read side's gRPC face.

Runs on the asyncio island beside ``CommandService`` and shares its call handling: tenant
from ``x-tenant-id`` metadata, request context echoed in the initial metadata, errors turned
into statuses through the one table in ``aggregate.domain.status``.

``QueryAggregates`` answers from the node's index (``queries``); with the index switched off
it answers UNIMPLEMENTED. ``WatchAggregates`` is served by ``WatchServer``
(``aggregate.adapters.grpc.watch_service``) once the service wires it; without it,
UNIMPLEMENTED.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aggregate.gateway.v1 import query_grpc

if TYPE_CHECKING:
    from grpclib.server import Stream

    from aggregate.adapters.grpc.service import CommandService
    from aggregate.adapters.grpc.watch_service import WatchServer
    from aggregate.gateway.v1 import query_pb2 as qpb

QUERY_SERVICE = "aggregate.gateway.v1.QueryService"
"""The full name of the service, as health checks and reflection know it."""

WATCH_NOT_SERVED = "WatchAggregates is not served by this version of the service"


class QueryService(query_grpc.QueryServiceBase):
    """``QueryAggregates`` over the node's index; ``WatchAggregates`` (not served yet)."""

    def __init__(self, commands: CommandService) -> None:
        self.commands = commands
        self.tracer = commands.tracer
        self.watches: WatchServer | None = None
        """Serves ``WatchAggregates`` once the service has wired the change feed."""

    async def QueryAggregates(
        self, stream: Stream[qpb.QueryAggregatesRequest, qpb.QueryAggregatesResponse]
    ) -> None:
        """One page of the views of a type that match a filter."""
        await self.commands.open_call(stream)
        raise GRPCError(
            Status.UNIMPLEMENTED, "queries are switched off on this node (AGGREGATE_INDEX_ENABLED)"
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
