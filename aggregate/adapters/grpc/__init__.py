"""The gRPC adapter (grpclib, asyncio island): ``CommandService`` and its server (DESIGN §9.1).

``CommandServer(handler, GrpcOptions.from_settings(settings), observer=...)`` serves the
command API, health and reflection; ``drain(timeout)`` stops it gracefully.
"""

from __future__ import annotations

from aggregate.adapters.grpc.query_service import QUERY_SERVICE as QUERY_SERVICE
from aggregate.adapters.grpc.query_service import QueryService as QueryService
from aggregate.adapters.grpc.server import CommandServer as CommandServer
from aggregate.adapters.grpc.service import COMMAND_SERVICE as COMMAND_SERVICE
from aggregate.adapters.grpc.service import CommandService as CommandService
from aggregate.adapters.grpc.service import GrpcOptions as GrpcOptions

__all__ = [
    "COMMAND_SERVICE",
    "QUERY_SERVICE",
    "CommandServer",
    "CommandService",
    "GrpcOptions",
    "QueryService",
]
