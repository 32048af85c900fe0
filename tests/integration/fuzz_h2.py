"""A raw HTTP/2 client for the fuzz suite: the ``h2`` state machine over a real socket.

Unlike grpcio or grpclib's client, it sends whatever it is given: header names and values
as raw bytes (non-ASCII included, no validation or normalisation), DATA frames that are
not well-formed gRPC messages, streams left open. Several streams share one connection
and are all in flight before any answer is read, which is how a gateway multiplexes
tenants: ``exchange`` sends them all, then collects every stream's outcome, or learns that
the connection died.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import h2.events
import h2.exceptions
from h2.config import H2Configuration
from h2.connection import H2Connection

from aggregate.gateway.v1 import aggregate_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

Headers = list[tuple[bytes, bytes]]

SUBMIT_PATH = b"/aggregate.gateway.v1.CommandService/SubmitCommand"
COLLECT_TIMEOUT = 10.0
"""How long ``exchange`` waits for every stream to end (the server answers in ms)."""

# gRPC status codes by number (the wire form of grpc-status).
STATUS_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


def grpc_frame(message: bytes, *, flag: int = 0, length: int | None = None) -> bytes:
    """A gRPC length-prefixed message: flag byte, 4-byte big-endian length, bytes.
    ``length`` overrides the prefix (a lie about the size)."""
    size = len(message) if length is None else length
    return bytes([flag]) + struct.pack(">I", size) + message


def request_headers(
    authority: str,
    *,
    path: bytes = SUBMIT_PATH,
    tenant: bytes | None = b"fuzz-good",
    extra: Iterable[tuple[bytes, bytes]] = (),
    content_type: bytes | None = b"application/grpc",
    te: bytes | None = b"trailers",
) -> Headers:
    """The header block of a gRPC call; ``None`` leaves a header out."""
    headers: Headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", authority.encode()),
    ]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    if te is not None:
        headers.append((b"te", te))
    if tenant is not None:
        headers.append((b"x-tenant-id", tenant))
    headers.extend(extra)
    return headers


@dataclass
class Call:
    """One stream to open: its headers, its DATA, whether the client ends its side."""

    headers: Headers
    body: bytes = b""
    end_stream: bool = True


@dataclass
class Outcome:
    """What the server did with one stream."""

    headers: Headers = field(default_factory=list)
    trailers: Headers = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None  # RST_STREAM error code from the server

    def _first(self, name: bytes) -> bytes | None:
        for key, value in [*self.trailers, *self.headers]:
            if key == name:
                return value
        return None

    @property
    def http_status(self) -> int | None:
        raw = self._first(b":status")
        return int(raw) if raw is not None else None

    @property
    def grpc_status(self) -> str | None:
        """The gRPC status name (trailers, or a trailers-only response), None if absent."""
        raw = self._first(b"grpc-status")
        if raw is None:
            return None
        try:
            return STATUS_NAMES.get(int(raw), f"?{raw!r}")
        except ValueError:
            return f"?{raw!r}"

    @property
    def grpc_message(self) -> str:
        raw = self._first(b"grpc-message") or b""
        return urllib.parse.unquote(raw.decode("latin-1"))

    @property
    def grpc_message_bytes(self) -> int:
        return len(self._first(b"grpc-message") or b"")

    def header(self, name: bytes) -> bytes | None:
        return self._first(name)

    def messages(self) -> list[bytes]:
        """The gRPC messages in the response DATA (length-prefixed)."""
        found, data = [], bytes(self.data)
        while len(data) >= 5:
            size = struct.unpack(">I", data[1:5])[0]
            found.append(data[5 : 5 + size])
            data = data[5 + size :]
        return found

    def describe(self) -> str:
        if self.grpc_status is not None:
            return f"{self.grpc_status} {self.grpc_message[:160]!r}"
        if self.reset is not None:
            return f"RST_STREAM({self.reset})"
        if self.http_status is not None:
            return f"HTTP {self.http_status} without grpc-status"
        return "no answer"


@dataclass
class Exchange:
    """The outcomes of the streams of one ``exchange``, in the order they were given,
    and how the connection ended (None: still open)."""

    outcomes: list[Outcome]
    connection_end: str | None


class RawH2Connection:
    """One HTTP/2 connection to a server, driven by hand (sync, one thread)."""

    def __init__(self, address: tuple[str, int], timeout: float = COLLECT_TIMEOUT) -> None:
        self.authority = f"{address[0]}:{address[1]}"
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.h2 = H2Connection(
            H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                validate_inbound_headers=False,
            )
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(2**30)
        self.streams: dict[int, Outcome] = {}
        self.closed: str | None = None
        self._flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawH2Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.closed is None:
            try:
                self.sock.sendall(data)
            except OSError as exc:
                self.closed = f"send failed: {exc.__class__.__name__}"

    def start(self, call: Call) -> int:
        """Open a stream for ``call`` and send its headers and body (as far as flow control
        and the server let it: a stream the server ends early stops being sent)."""
        stream_id = self.h2.get_next_available_stream_id()
        outcome = self.streams[stream_id] = Outcome()
        self.h2.send_headers(stream_id, call.headers, end_stream=call.end_stream and not call.body)
        self._flush()
        body = call.body
        deadline = time.monotonic() + COLLECT_TIMEOUT
        while body and self.closed is None and not outcome.ended and outcome.reset is None:
            window = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if window <= 0:
                if time.monotonic() > deadline:
                    break
                self.pump(0.5)
                continue
            chunk, body = body[:window], body[window:]
            try:
                self.h2.send_data(stream_id, chunk, end_stream=call.end_stream and not body)
            except h2.exceptions.StreamClosedError:
                break
            self._flush()
        return stream_id

    def pump(self, timeout: float) -> None:
        """Read once (up to ``timeout``) and record the events."""
        if self.closed is not None:
            return
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return
        except OSError as exc:
            self.closed = f"connection error: {exc.__class__.__name__}"
            return
        if not data:
            self.closed = "EOF"
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.closed = f"client-side protocol error: {exc}"
            return
        for event in events:
            self._record(event)
        self._flush()

    def _record(self, event: h2.events.Event) -> None:
        stream_id = getattr(event, "stream_id", None)
        outcome = self.streams.get(stream_id) if stream_id else None
        if isinstance(event, h2.events.ResponseReceived) and outcome:
            outcome.headers = list(event.headers)
        elif isinstance(event, h2.events.TrailersReceived) and outcome:
            outcome.trailers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived) and outcome:
            outcome.data += event.data
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and outcome:
            outcome.ended = True
        elif isinstance(event, h2.events.StreamReset) and outcome:
            outcome.reset = int(event.error_code or 0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = f"GOAWAY({int(event.error_code or 0)})"

    def collect(self, stream_ids: Sequence[int], timeout: float = COLLECT_TIMEOUT) -> None:
        """Read until every stream ended (or was reset), the connection died, or
        ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while self.closed is None:
            pending = [
                s for s in stream_ids if not self.streams[s].ended and self.streams[s].reset is None
            ]
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                return
            self.pump(remaining)

    def exchange(self, calls: Sequence[Call], timeout: float = COLLECT_TIMEOUT) -> Exchange:
        """Start every call (all in flight at once), then collect their outcomes."""
        ids = []
        for call in calls:
            if self.closed is not None:
                break
            try:
                ids.append(self.start(call))
            except h2.exceptions.ProtocolError as exc:
                self.closed = f"client refused to send: {exc}"
        self.collect(ids, timeout)
        outcomes = [self.streams[i] for i in ids]
        outcomes += [Outcome() for _ in range(len(calls) - len(ids))]
        return Exchange(outcomes, self.closed)


def submit_body(request: pb.SubmitCommandRequest) -> bytes:
    """A ``SubmitCommandRequest`` as one gRPC message."""
    return grpc_frame(request.SerializeToString())


def proto_field(number: int, value: bytes) -> bytes:
    """One length-delimited protobuf field, bytes as given (invalid UTF-8 included)."""
    return _varint((number << 3) | 2) + _varint(len(value)) + value


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
