"""``WatchAggregates``: a tenant's committed changes streamed to a client (DESIGN §10).

A call registers a watcher with the hub first, then sends what came before (from the hub's
buffer, or read from the stream when ``from_position`` is older than the buffer), then the
live changes, skipping any it already sent: every change of the watched subset after
``from_position``, in position order, none twice, none missing. ``from_position`` 0 means
from now.

A watch ends with a status and the trailing metadata ``x-resume-position``: the position
after which the client has not been sent changes (the last one it was sent, or the position
it started after). RESOURCE_EXHAUSTED: it did not read fast enough (its queue hit its
bound). UNAVAILABLE: its tenant moved to another node (the message names it), the server
is shutting down, or a change may have missed the live feed; resuming with that position
loses nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aggregate.adapters.grpc import convert
from aggregate.domain.envelopes import dumps
from aggregate.domain.errors import AggregateError
from aggregate.domain.ids import parse_uuid, validate_aggregate_type
from aggregate.gateway.v1 import query_pb2 as qpb
from aggregate.logcontext import log_context
from aggregate.watch.changes import WatchSubset
from aggregate.watch.filters import compile_filter
from aggregate.watch.follow import Follow

if TYPE_CHECKING:
    from grpclib.server import Stream

    from aggregate.adapters.grpc.service import CommandService
    from aggregate.query.plan import QueryLimits
    from aggregate.watch.changes import Change
    from aggregate.watch.hub import WatchHub
    from aggregate.watch.source import ChangeSource

log = logging.getLogger(__name__)

RESUME_HEADER = "x-resume-position"


def change_message(change: Change, *, include_state: bool) -> qpb.AggregateChange:
    state_json = ""
    if include_state and change.state is not None:
        state_json = dumps(change.state).decode()
    return qpb.AggregateChange(
        aggregate_type=change.key.aggregate_type,
        aggregate_id=str(change.key.aggregate_id),
        version=change.version,
        position=change.position,
        command_id=str(change.command_id),
        events=[convert.event_message(e) for e in change.events],
        state_json=state_json,
    )


class WatchServer:
    """Serves ``WatchAggregates`` calls from ``hub``, reading older changes from ``source``."""

    def __init__(
        self,
        commands: CommandService,
        hub: WatchHub,
        source: ChangeSource,
        limits: QueryLimits | None = None,
    ) -> None:
        self.commands = commands
        self.limits = limits  # the filter language's limits (None: its defaults)
        self.hub = hub
        self.source = source

    def subset_of(self, request: qpb.WatchAggregatesRequest, tenant_id: str) -> WatchSubset:
        """The watched subset a request names.

        Raises:
            InvalidArgumentError: a malformed or unconfigured type, an id that is not a UUID,
                a bad filter. (An id without a type watches that id in every type.)
        """
        aggregate_type = ""
        if request.aggregate_type:
            aggregate_type = validate_aggregate_type(request.aggregate_type)
            self.commands.handler.types.get(aggregate_type)
        aggregate_id = None
        if request.aggregate_id:
            aggregate_id = parse_uuid(request.aggregate_id, "aggregate_id")
        return WatchSubset(
            tenant_id, aggregate_type, aggregate_id, compile_filter(request.filter, self.limits)
        )

    async def watch(self, stream: Stream[qpb.WatchAggregatesRequest, qpb.AggregateChange]) -> None:
        """Serve one call until the client leaves or the watch ends (see the module).

        Cancellation (client gone): the watcher is unregistered.
        """
        tenant_id, context = await self.commands.open_call(stream)
        request = await convert.receive(stream)
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "WatchAggregates needs a request message")
        with log_context(
            tenant_id=tenant_id,
            correlation_id=context.correlation_id,
            trace_id=context.trace_id,
            request_id=context.request_id,
        ):
            handler = self.commands.handler
            try:
                subset = self.subset_of(request, tenant_id)
                with handler.gate.admit(tenant_id):
                    pass  # hosted and accepting here: else UNAVAILABLE naming the owner
                follow = Follow(
                    self.hub,
                    subset,
                    request.from_position,
                    source=self.source,
                    store=handler.store,
                    types=handler.types,
                    include_state=request.include_state,
                )
            except AggregateError as exc:
                raise self.commands.failure_of(exc, tenant_id, context).grpc_error() from None
            include_state = request.include_state
            changes = follow.changes()
            try:
                async for change in changes:
                    await stream.send_message(change_message(change, include_state=include_state))
            except AggregateError as exc:
                failure = self.commands.failure_of(exc, tenant_id, context)
                await stream.send_trailing_metadata(
                    status=Status[failure.code],
                    status_message=failure.message,
                    metadata={**failure.trailers(), RESUME_HEADER: str(follow.position)},
                )
            finally:
                await changes.aclose()
                follow.close()
