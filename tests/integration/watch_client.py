"""Watch clients for tests: grpclib (async, streaming) and grpcio (sync, in a thread)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import grpc
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError

from aggregate.gateway.v1 import query_grpc
from aggregate.gateway.v1 import query_pb2 as qpb
from tests.integration.grpc_harness import grpcio_query_stubs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

RESUME = "x-resume-position"


@dataclass
class WatchResult:
    """What a watch delivered and how it ended (status None: still open when we stopped)."""

    changes: list[qpb.AggregateChange] = field(default_factory=list)
    status: str | None = None
    message: str | None = None
    resume: int | None = None
    trailers: dict[str, str] = field(default_factory=dict)

    @property
    def positions(self) -> list[int]:
        return [c.position for c in self.changes]


def request(
    aggregate_type: str = "", *, from_position: int = 0, include_state: bool = False, **kw: Any
) -> qpb.WatchAggregatesRequest:
    return qpb.WatchAggregatesRequest(
        aggregate_type=aggregate_type,
        from_position=from_position,
        include_state=include_state,
        **kw,
    )


@contextlib.asynccontextmanager
async def open_watch(
    address: tuple[str, int], req: qpb.WatchAggregatesRequest, metadata: dict[str, str]
) -> AsyncIterator[Any]:
    """An open grpclib watch stream (request sent); the caller reads it."""
    channel = Channel(*address)
    try:
        stub = query_grpc.QueryServiceStub(channel)
        stream = stub.WatchAggregates.open(metadata=metadata)
        await stream.__aenter__()
        try:
            await stream.send_message(req, end=True)
            yield stream
        finally:
            if not stream._recv_trailing_metadata_done:  # still open: leave it
                with contextlib.suppress(Exception):
                    await stream.cancel()
            # the status was read (or the call left): no second report on exit
            with contextlib.suppress(GRPCError, StreamTerminatedError):
                await stream.__aexit__(None, None, None)
    finally:
        channel.close()


async def read(stream: Any, result: WatchResult, count: int | None = None) -> WatchResult:
    """Read changes into ``result`` until ``count`` arrived or the watch ended."""
    try:
        while count is None or len(result.changes) < count:
            change = await stream.recv_message()
            if change is None:
                await stream.recv_trailing_metadata()
                result.status = "OK"
                break
            result.changes.append(change)
    except GRPCError as exc:
        result.status = exc.status.name
        result.message = exc.message
        trailing = dict(stream.trailing_metadata or {})
        result.trailers = {k: str(v) for k, v in trailing.items()}
        if RESUME in trailing:
            result.resume = int(trailing[RESUME])
    return result


async def watch_n(
    address: tuple[str, int],
    req: qpb.WatchAggregatesRequest,
    metadata: dict[str, str],
    count: int,
) -> WatchResult:
    """Open a grpclib watch, read ``count`` changes (or until it ends), leave."""
    async with open_watch(address, req, metadata) as stream:
        return await read(stream, WatchResult(), count)


def grpcio_watch_n(
    address: tuple[str, int],
    req: qpb.WatchAggregatesRequest,
    metadata: dict[str, str],
    count: int,
) -> WatchResult:
    """The same through grpcio (call it in a worker thread)."""
    channel = grpc.insecure_channel(
        f"{address[0]}:{address[1]}", options=[("grpc.enable_http_proxy", 0)]
    )
    result = WatchResult()
    try:
        stub = grpcio_query_stubs().QueryServiceStub(channel)
        call = stub.WatchAggregates(req, metadata=tuple(metadata.items()), timeout=30)
        try:
            for change in call:
                result.changes.append(change)
                if len(result.changes) >= count:
                    call.cancel()
                    break
        except grpc.RpcError:
            result.status = call.code().name
            result.message = call.details()
            trailing = dict(call.trailing_metadata() or ())
            if RESUME in trailing:
                result.resume = int(trailing[RESUME])
    finally:
        channel.close()
    return result


async def grpcio_watch(
    address: tuple[str, int], req: qpb.WatchAggregatesRequest, metadata: dict[str, str], count: int
) -> WatchResult:
    return await anyio.to_thread.run_sync(grpcio_watch_n, address, req, metadata, count)


class SlowWatch:
    """A watch over a raw HTTP/2 connection (h2) that grants the server 1 KiB of stream
    window and reads nothing until ``finish``: a client that does not keep up. (grpclib's
    and grpcio's clients buffer what arrives, so they never push back.)"""

    def __init__(
        self, address: tuple[str, int], req: qpb.WatchAggregatesRequest, metadata: dict[str, str]
    ) -> None:
        import socket

        import h2.config
        import h2.connection
        import h2.settings

        self.sock = socket.create_connection(address, timeout=30)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1024})
        self.stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/aggregate.gateway.v1.QueryService/WatchAggregates"),
            (":authority", f"{address[0]}:{address[1]}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata.items(),
        ]
        body = req.SerializeToString()
        self.conn.send_headers(self.stream_id, headers)
        self.conn.send_data(
            self.stream_id, b"\0" + len(body).to_bytes(4, "big") + body, end_stream=True
        )
        self.sock.sendall(self.conn.data_to_send())

    def finish(self) -> WatchResult:
        """Read everything until the server ends the call; the changes and the status."""
        import h2.events

        from aggregate.gateway.v1 import query_pb2

        data = b""
        trailers: dict[str, str] = {}
        ended = False
        while not ended:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            for event in self.conn.receive_data(chunk):
                if isinstance(event, h2.events.DataReceived):
                    data += event.data
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived)):
                    trailers.update(
                        (
                            k.decode() if isinstance(k, bytes) else k,
                            v.decode() if isinstance(v, bytes) else v,
                        )
                        for k, v in event.headers
                    )
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
            self.sock.sendall(self.conn.data_to_send())
        self.sock.close()
        result = WatchResult()
        while len(data) >= 5:
            size = int.from_bytes(data[1:5], "big")
            result.changes.append(query_pb2.AggregateChange.FromString(data[5 : 5 + size]))
            data = data[5 + size :]
        code = int(trailers.get("grpc-status", "-1"))
        result.status = grpc.StatusCode(next(s for s in grpc.StatusCode if s.value[0] == code)).name
        result.message = trailers.get("grpc-message")
        if RESUME in trailers:
            result.resume = int(trailers[RESUME])
        return result
