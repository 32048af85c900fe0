"""The standard grpc.health.v1.Health (readiness switchable) and server reflection, through
grpclib's and grpcio's clients."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import grpc
import pytest
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest, ServerReflectionResponse

from aggregate.adapters.grpc import COMMAND_SERVICE, QUERY_SERVICE
from tests.integration.grpc_harness import CLIENT_KINDS, open_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aggregate.adapters.grpc import CommandServer

pytestmark = pytest.mark.anyio
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[CommandServer]:
    async with open_server() as srv:
        yield srv


async def health(kind: str, address: tuple[str, int], service: str) -> int:
    """The serving status the server reports for ``service``."""
    request = HealthCheckRequest(service=service)
    if kind == "grpclib":
        async with Channel(*address) as channel:
            reply = await HealthStub(channel).Check(request, timeout=5)
        return reply.status

    def check() -> int:
        with grpc.insecure_channel(
            "{}:{}".format(*address), options=[("grpc.enable_http_proxy", 0)]
        ) as channel:
            method = channel.unary_unary(
                HEALTH_CHECK,
                request_serializer=HealthCheckRequest.SerializeToString,
                response_deserializer=HealthCheckResponse.FromString,
            )
            return int(method(request, timeout=5).status)

    return await anyio.to_thread.run_sync(check)


async def reflect(
    kind: str, address: tuple[str, int], request: ServerReflectionRequest
) -> ServerReflectionResponse:
    if kind == "grpclib":
        async with Channel(*address) as channel:
            [reply] = await ServerReflectionStub(channel).ServerReflectionInfo([request], timeout=5)
        return reply

    def ask() -> ServerReflectionResponse:
        with grpc.insecure_channel(
            "{}:{}".format(*address), options=[("grpc.enable_http_proxy", 0)]
        ) as channel:
            method = channel.stream_stream(
                REFLECTION,
                request_serializer=ServerReflectionRequest.SerializeToString,
                response_deserializer=ServerReflectionResponse.FromString,
            )
            [reply] = list(method(iter([request]), timeout=5))
            return reply

    return await anyio.to_thread.run_sync(ask)


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_health_follows_readiness(server: CommandServer, kind: str) -> None:
    with anyio.fail_after(10):
        names = ("", COMMAND_SERVICE, QUERY_SERVICE)
        serving = [await health(kind, server.address, name) for name in names]
        server.set_serving(False)
        not_serving = [await health(kind, server.address, name) for name in names]
        server.set_serving(True)
        again = await health(kind, server.address, COMMAND_SERVICE)
    assert serving == [HealthCheckResponse.SERVING] * 3
    assert not_serving == [HealthCheckResponse.NOT_SERVING] * 3
    assert again == HealthCheckResponse.SERVING


async def test_health_reports_not_serving_while_draining(server: CommandServer) -> None:
    with anyio.fail_after(10):
        server.begin_drain()
        status = await health("grpclib", server.address, COMMAND_SERVICE)
    assert status == HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_reflection_lists_services_and_describes_the_api(
    server: CommandServer, kind: str
) -> None:
    with anyio.fail_after(10):
        listed = await reflect(kind, server.address, ServerReflectionRequest(list_services=""))
        described = await reflect(
            kind,
            server.address,
            ServerReflectionRequest(file_containing_symbol=COMMAND_SERVICE),
        )
    names = {s.name for s in listed.list_services_response.service}
    assert {COMMAND_SERVICE, QUERY_SERVICE, "grpc.health.v1.Health"} <= names
    [raw] = described.file_descriptor_response.file_descriptor_proto
    proto = FileDescriptorProto.FromString(raw)
    assert (proto.name, proto.package) == (
        "aggregate/gateway/v1/aggregate.proto",
        "aggregate.gateway.v1",
    )
    [service] = proto.service
    assert [m.name for m in service.method] == ["SubmitCommand", "SubmitCommands", "GetAggregate"]


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_reflection_describes_the_query_service(server: CommandServer, kind: str) -> None:
    with anyio.fail_after(10):
        described = await reflect(
            kind, server.address, ServerReflectionRequest(file_containing_symbol=QUERY_SERVICE)
        )
    protos = [
        FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    [query] = [p for p in protos if p.name == "aggregate/gateway/v1/query.proto"]
    assert query.package == "aggregate.gateway.v1"
    [service] = query.service
    assert [m.name for m in service.method] == ["QueryAggregates", "WatchAggregates"]
    assert service.method[1].server_streaming
