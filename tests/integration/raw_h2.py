"""A raw HTTP/2 client for the gRPC server: h2 over a real socket, frame by frame.

For the requests grpclib and grpcio will not send (non-ASCII header bytes, broken message
framing, malformed ``grpc-timeout``, missing pseudo-headers, oversized header blocks). Header
names and values are bytes and go out unchecked; every response is kept per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

import h2.events
import h2.exceptions
from h2.config import H2Configuration
from h2.connection import H2Connection

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable

RawHeaders = list[tuple[bytes, bytes]]

SUBMIT = b"/aggregate.gateway.v1.CommandService/SubmitCommand"
SUBMIT_MANY = b"/aggregate.gateway.v1.CommandService/SubmitCommands"


def grpc_headers(path: bytes = SUBMIT, metadata: Iterable[tuple[bytes, bytes]] = ()) -> RawHeaders:
    """The request headers a gRPC client sends, then ``metadata``."""
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"localhost"),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
        *metadata,
    ]


def frame(message: bytes, *, flag: int = 0, length: int | None = None) -> bytes:
    """A length-prefixed gRPC message; ``flag`` and ``length`` may lie."""
    return bytes([flag]) + struct.pack(">I", len(message) if length is None else length) + message


@dataclass
class RawResponse:
    """What the server sent on one stream."""

    headers: RawHeaders = field(default_factory=list)
    trailers: RawHeaders = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None  # the RST_STREAM error code, if the server reset the stream

    def header(self, name: str) -> str | None:
        """A header of the response (trailers first, then the headers), as text."""
        for key, value in (*self.trailers, *self.headers):
            if key == name.encode():
                return value.decode()
        return None

    @property
    def status(self) -> str:
        """The gRPC status name (``"OK"``, ``"UNKNOWN"``, ...), or ``"<none>"``."""
        from grpclib.const import Status

        code = self.header("grpc-status")
        return "<none>" if code is None else Status(int(code)).name

    @property
    def message(self) -> str:
        """``grpc-message``, percent-decoded."""
        return unquote_to_bytes(self.header("grpc-message") or "").decode()

    def messages(self) -> list[bytes]:
        """The length-prefixed messages of the response body."""
        found, data = [], bytes(self.data)
        while len(data) >= 5:
            (length,) = struct.unpack(">I", data[1:5])
            found.append(data[5 : 5 + length])
            data = data[5 + length :]
        return found


class StreamGoneError(Exception):
    """The server ended or reset the stream (or the connection) while data was being sent."""


class RawH2Client:
    """One client HTTP/2 connection. Use ``RawH2Client.connect`` (an async context)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.h2 = H2Connection(
            H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                validate_inbound_headers=False,
            )
        )
        self.responses: dict[int, RawResponse] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.settings_acknowledged = asyncio.Event()
        self._changed = asyncio.Event()

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, address: tuple[str, int]) -> AsyncIterator[RawH2Client]:
        reader, writer = await asyncio.open_connection(*address)
        client = cls(reader, writer)
        client.h2.initiate_connection()
        client._flush()
        pump = asyncio.get_running_loop().create_task(client._pump())
        try:
            yield client
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            self._writer.write(data)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _pump(self) -> None:
        try:
            while chunk := await self._reader.read(65536):
                for event in self.h2.receive_data(chunk):
                    self._on(event)
                self._flush()
                self._notify()
        except (OSError, h2.exceptions.ProtocolError):
            pass
        self.closed = True
        self._notify()

    def _on(self, event: h2.events.Event) -> None:
        stream_id = getattr(event, "stream_id", None)
        response = self.responses.get(stream_id) if stream_id else None
        if isinstance(event, h2.events.ResponseReceived) and response is not None:
            response.headers = list(event.headers or ())
        elif isinstance(event, h2.events.TrailersReceived) and response is not None:
            response.trailers = list(event.headers or ())
        elif isinstance(event, h2.events.DataReceived) and response is not None:
            response.data += event.data or b""
            self.h2.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        elif isinstance(event, h2.events.StreamEnded) and response is not None:
            response.ended = True
        elif isinstance(event, h2.events.StreamReset) and response is not None:
            response.reset = int(event.error_code or 0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event
        elif isinstance(event, h2.events.SettingsAcknowledged):
            self.settings_acknowledged.set()

    def request(self, headers: RawHeaders, *, end: bool = False) -> int:
        """Open a stream with ``headers``; ``end``: no body follows. Returns the stream id."""
        stream_id = self.h2.get_next_available_stream_id()
        self.responses[stream_id] = RawResponse()
        self.h2.send_headers(stream_id, headers, end_stream=end)
        self._flush()
        return stream_id

    async def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Send ``data`` on a stream as flow control allows (an empty ``data`` sends one
        empty DATA frame).

        Raises:
            StreamGoneError: the server answered, reset the stream or closed the connection
                before all of it went out.
        """
        view = memoryview(data)
        while True:
            response = self.responses[stream_id]
            if self.closed or response.ended or response.reset is not None:
                raise StreamGoneError(f"stream {stream_id} is gone: {response}")
            window = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if view and window <= 0:
                await self._changed.wait()
                continue
            chunk, view = view[:window], view[window:]
            try:
                self.h2.send_data(stream_id, bytes(chunk), end_stream=end and not view)
            except h2.exceptions.StreamClosedError:
                raise StreamGoneError(f"stream {stream_id} is closed") from None
            self._flush()
            await self._writer.drain()
            if not view:
                return

    def end(self, stream_id: int) -> None:
        """End the client's side of a stream (an empty DATA frame with END_STREAM)."""
        self.h2.end_stream(stream_id)
        self._flush()

    async def response(self, stream_id: int) -> RawResponse:
        """The stream's response once the server has ended or reset it.

        Raises:
            StreamGoneError: the connection closed first.
        """
        response = self.responses[stream_id]
        while not (response.ended or response.reset is not None):
            if self.closed:
                raise StreamGoneError(f"the connection closed before stream {stream_id} ended")
            await self._changed.wait()
        return response

    async def wait_closed(self) -> None:
        """Wait until the server has closed the connection."""
        await self.wait_for(lambda: self.closed)

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, checking it after every batch of frames."""
        while not condition():
            if self.closed:
                raise StreamGoneError("the connection closed")
            await self._changed.wait()
