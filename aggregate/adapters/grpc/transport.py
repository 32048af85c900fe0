"""The gRPC server's HTTP/2 transport where grpclib 0.4 and h2 fall short on hostile input.

``CommandServer`` installs these on every connection (``accept_calls``). Each one is small
and has a test in ``tests/integration/test_grpc_transport.py`` that fails without it:

1. **Header bytes above 0x7F.** grpclib has h2 decode header blocks as ASCII: one such byte
   raised ``UnicodeDecodeError`` inside ``data_received`` and closed the connection with
   every call on it. ``server_h2_config`` decodes them as Latin-1 (one character per byte,
   as ASGI servers do). The gRPC spec says a server "must not error due to receiving an
   invalid ASCII-Value ...: [it] may throw the value away or accept the value", so the values
   reach the service, which answers them like any other bad value: an invalid
   ``x-tenant-id`` is INVALID_ARGUMENT, an invalid correlation id or traceparent is replaced.
   A ``:path`` that names no method is UNIMPLEMENTED (grpclib's own answer).
2. **Request headers** grpclib answers UNKNOWN, without a status, or not at all (a missing
   ``:method`` or ``:path`` raised ``KeyError`` and left the call hanging; so did binary
   metadata that is not base64) are answered here, trailers-only, before grpclib sees the
   call: ``check_request`` below has the list and the statuses (those of grpc-go and
   grpc-java). A header list over ``max_header_list_bytes`` is RESOURCE_EXHAUSTED for that
   call only: h2 decodes blocks up to ``HEADER_BLOCK_HARD_LIMIT`` (advertised as
   SETTINGS_MAX_HEADER_LIST_SIZE), so HPACK state stays whole and the connection lives.
3. **Message framing** (``CallStream``): grpclib raised ``NotImplementedError`` for a set
   compressed flag, took any non-zero flag byte for "compressed", buffered whatever length a
   prefix announced, and raised ``AssertionError`` when the stream ended inside a message
   or an empty DATA frame came mid-stream: all UNKNOWN "Internal Server Error".
4. **Limits**: SETTINGS_MAX_CONCURRENT_STREAMS from the options (h2's default is 100).
   **Flow-control windows** (``TransportLimits.grpclib_config``): each stream may have
   ``STREAM_WINDOW_BYTES`` (HTTP/2's default, 64 KiB) unread, the connection as many times
   that as it may have streams. grpclib's defaults were 4 MiB for each stream and 4 MiB for
   the whole connection: one stream whose commands the server does not read yet (a full
   ``SubmitCommands`` window, a stream paced for its tenant's flood) could take the whole
   connection's window, so another tenant's calls on that connection (an API gateway's)
   waited for it: 5.5 s in the test. Now the streams' windows together never exceed the
   connection's, so no stream waits for another's reader.
5. **Early answers** (``early``, optional): a call the service can refuse from its headers
   alone (``aggregate.adapters.grpc.early``: a tenant over its quota, an open breaker) is
   answered here, before grpclib builds a stream, a task and a request handler for it: a
   refusal then costs a few header blocks rather than a whole call.

grpclib internals this relies on: ``EventsProcessor.processors`` (to take over
``RequestReceived``), ``Connection._connection`` and ``._transport``, and that
``grpclib.stream.recv_message`` reads a message as ``recv_data(5)`` then
``recv_data(length)``. If they change, ``accept_calls`` leaves grpclib's own handling in
place (the transport tests fail) rather than breaking the server.
"""

from __future__ import annotations

import binascii
import logging
import re
import time
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import TYPE_CHECKING, Any, cast

from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.metadata import decode_bin_value, encode_grpc_message
from grpclib.protocol import Buffer, Stream
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived
from h2.settings import SettingCodes

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from grpclib.protocol import Connection, H2Protocol

log = logging.getLogger(__name__)

HEADER_BLOCK_HARD_LIMIT = 1_048_576
"""The largest header list h2 decodes (and the SETTINGS_MAX_HEADER_LIST_SIZE advertised): a
larger block closes the connection, since HPACK state cannot be kept past that point. h2
already refuses a block of more than 64 CONTINUATION frames of 16 KiB."""

MIN_TIMEOUT_SECONDS = 0.001
"""A ``grpc-timeout`` shorter than this is answered DEADLINE_EXCEEDED at once: grpclib answers
a deadline that has passed before the method starts with UNKNOWN."""

_GRPC = "application/grpc"
_CONTENT_TYPES = frozenset({_GRPC, f"{_GRPC}+", f"{_GRPC}+proto"})  # what grpclib accepts
_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")  # the gRPC spec's TimeoutValue TimeoutUnit
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_QUOTE_LIMIT = 40

Headers = list[tuple[str, str]]
if TYPE_CHECKING:
    EarlyCheck = Callable[[Headers], "Refusal | None"]
    CallObserver = Callable[[Headers, "Refusal | None"], None]


def quoted(text: str) -> str:
    """``text`` as a client may see it quoted back: at most a short prefix."""
    if len(text) <= _QUOTE_LIMIT:
        return repr(text)
    return f"{text[:_QUOTE_LIMIT]!r}... ({len(text)} characters)"


def server_h2_config() -> H2Configuration:
    """grpclib's server configuration of h2, decoding header bytes as Latin-1."""
    return H2Configuration(
        client_side=False,
        header_encoding="latin-1",
        validate_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_inbound_headers=False,
        normalize_outbound_headers=False,
    )


@dataclass(frozen=True, slots=True)
class Refusal:
    """A call the transport answers itself: gRPC status, message, HTTP status."""

    status: Status
    message: str
    http_status: int = 200
    initial: tuple[tuple[str, str], ...] = ()
    """Response metadata sent before the status (then not trailers-only): validated values."""
    trailers: tuple[tuple[str, str], ...] = ()
    """Trailing metadata sent with the status: validated values."""
    quiet: bool = False
    """No log line (a refusal that may come thousands of times a second: the caller counts)."""
    quota_tenant: str | None = None
    """The tenant whose quota refused the call (``aggregate.adapters.grpc.pacing``)."""
    quota_rate: float = 0.0
    """That tenant's commands/s quota if it refused the call (0: its in-flight quota)."""


def check_request(
    headers: Headers, fields: dict[str, str], max_header_list_bytes: int
) -> Refusal | None:
    """Why the transport answers this request itself, or None to hand it to grpclib.
    ``fields`` is ``dict(headers)``.

    Statuses as grpc-go and grpc-java give them: ``:method`` not POST → 405 INTERNAL;
    ``content-type`` not gRPC → 415 INTERNAL; ``te`` not ``trailers`` → 400 INTERNAL; no
    ``:path`` → UNIMPLEMENTED; header list over ``max_header_list_bytes`` →
    RESOURCE_EXHAUSTED; ``grpc-timeout`` not 1-8 digits and a unit → INTERNAL; a deadline
    under ``MIN_TIMEOUT_SECONDS`` → DEADLINE_EXCEEDED; binary (``-bin``) metadata that is
    not base64 → INVALID_ARGUMENT (grpc-go says INTERNAL; it is the client's mistake in a
    value, not broken framing).
    """
    method = fields.get(":method")
    if method != "POST":
        return Refusal(
            Status.INTERNAL, f"the HTTP method must be POST, not {quoted(method or '')}", 405
        )
    content_type = fields.get("content-type")
    if content_type not in _CONTENT_TYPES:
        shown = "missing" if content_type is None else quoted(content_type)
        return Refusal(
            Status.INTERNAL,
            f"content-type must be {_GRPC} or {_GRPC}+proto, got {shown}",
            415,
        )
    if fields.get("te") != "trailers":
        return Refusal(
            Status.INTERNAL,
            'the request lacks "te: trailers" (a proxy on the way may not support trailers)',
            400,
        )
    if ":path" not in fields:
        return Refusal(Status.UNIMPLEMENTED, "the request has no :path")
    exact = len(fields) == len(headers)  # no repeated names: the dict holds every field
    names = "\0".join(fields)
    if exact:
        size = len(names) - len(fields) + 1 + len("".join(fields.values())) + 32 * len(fields)
    else:
        size = sum(map(len, chain.from_iterable(headers))) + 32 * len(headers)
    if size > max_header_list_bytes:
        return Refusal(
            Status.RESOURCE_EXHAUSTED,
            f"the request headers are {size} bytes, more than this server accepts "
            f"({max_header_list_bytes} bytes, grpc_max_header_list_bytes)",
        )
    if "grpc-timeout" in fields:
        timeouts = [fields["grpc-timeout"]] if exact else _values(headers, "grpc-timeout")
        refusal = _check_timeouts(timeouts)
        if refusal is not None:
            return refusal
    if "-bin\0" in names + "\0":
        return _check_binary(headers)
    return None


def _values(headers: Headers, name: str) -> list[str]:
    return [value for key, value in headers if key == name]


def _check_timeouts(values: Sequence[str]) -> Refusal | None:
    for value in values:
        match = _TIMEOUT.fullmatch(value)
        if match is None:
            return Refusal(
                Status.INTERNAL,
                f"malformed grpc-timeout {quoted(value)}: the gRPC protocol wants 1-8 digits "
                "and a unit (H, M, S, m, u or n)",
            )
        if int(match[1]) * _UNIT_SECONDS[match[2]] < MIN_TIMEOUT_SECONDS:
            return Refusal(
                Status.DEADLINE_EXCEEDED,
                f"the call's deadline (grpc-timeout {value}) leaves less than 1 ms: "
                "nothing was done",
            )
    return None


def _check_binary(headers: Headers) -> Refusal | None:
    for name, value in headers:
        if name.endswith("-bin") and not name.startswith(("grpc-", ":")):
            try:
                decode_bin_value(value.encode("ascii"))
            except (UnicodeEncodeError, binascii.Error):
                return Refusal(
                    Status.INVALID_ARGUMENT,
                    f"malformed binary metadata {quoted(name)}: the value is not base64",
                )
    return None


class _Buffer(Buffer):
    """grpclib's receive buffer of one stream, ignoring empty DATA frames: grpclib stores
    them as its end-of-stream marker, so one mid-stream failed the next read."""

    def add(self, data: bytes, ack_size: int) -> None:
        if ack_size:  # an empty frame has nothing to read and nothing to acknowledge
            super().add(data, ack_size)


class CallStream(Stream):
    """grpclib's HTTP/2 stream of one server call, reading gRPC messages strictly.

    grpclib reads a message as ``recv_data(5)`` (the prefix) then ``recv_data(length)``
    (``grpclib.stream.recv_message``). The prefix is checked before anything more is read:
    a compressed flag is UNIMPLEMENTED with ``grpc-accept-encoding: identity`` (this server
    supports no compression), another flag byte is INTERNAL (malformed framing), a length
    over ``max_message_bytes`` is RESOURCE_EXHAUSTED (so no more than that is ever buffered
    for a message). A stream that ends inside a prefix or a message is INTERNAL.
    """

    _in_message = False

    def __init__(
        self,
        connection: Connection,
        h2_connection: H2Connection,
        transport: Any,
        *,
        stream_id: int,
        max_message_bytes: int,
        encoding: str | None,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.encoding = encoding
        super().__init__(connection, h2_connection, transport, stream_id=stream_id)

    def init_stream(self, stream_id: int, connection: Connection) -> None:
        # grpclib's, with the buffer that ignores empty DATA frames
        self.id = stream_id
        self.buffer = _Buffer(partial(connection.ack, stream_id))
        connection.streams_started += 1
        self.created = connection.last_stream_created = time.monotonic()

    async def recv_data(self, size: int) -> bytes:
        try:
            data = await self.buffer.read(size)
        except AssertionError:  # grpclib's Buffer: the stream ended before `size` bytes came
            where = f"a message of {size} bytes" if self._in_message else "a message's prefix"
            raise self._refused(
                Status.INTERNAL, f"malformed request: the stream ended inside {where}"
            ) from None
        if self._in_message:
            self._in_message = False
            return data
        if not data:
            return data  # the end of the request stream
        if data[0]:
            raise self._flag_error(data[0])
        length = int.from_bytes(data[1:5], "big")
        if length > self.max_message_bytes:
            raise self._refused(
                Status.RESOURCE_EXHAUSTED,
                f"the request message is {length} bytes, more than this server accepts "
                f"({self.max_message_bytes} bytes, max_message_bytes)",
            )
        self._in_message = True
        return data

    def _flag_error(self, flag: int) -> GRPCError:
        if flag != 1:
            return self._refused(
                Status.INTERNAL,
                f"malformed request: a message's compressed flag is {flag}, not 0 or 1",
            )
        # grpclib's trailers cannot carry a grpc- header; add it to the ones it sends
        setattr(self, "send_headers", partial(_send_with_accept_encoding, self))  # noqa: B010
        shown = "none" if self.encoding is None else quoted(self.encoding)
        return self._refused(
            Status.UNIMPLEMENTED,
            f"this server does not support compressed messages (grpc-encoding {shown}); "
            "send them uncompressed (grpc-accept-encoding: identity)",
        )

    def _refused(self, status: Status, message: str) -> GRPCError:
        """The error that ends the call, after one log line."""
        log.info(
            "refused a gRPC request message from %s: %s %s",
            self.connection.get_peer().addr(),
            status.name,
            message,
        )
        return GRPCError(status, message)


async def _send_with_accept_encoding(
    stream: CallStream, headers: Headers, end_stream: bool = False
) -> None:
    if end_stream:
        headers = [*headers, ("grpc-accept-encoding", "identity")]
    await Stream.send_headers(stream, headers, end_stream)


STREAM_WINDOW_BYTES = 65_535
"""What one stream may have sent and not yet read (HTTP/2's initial window): a large
message is read, and its window given back, as it arrives."""

MAX_WINDOW_BYTES = 2**31 - 1
"""HTTP/2's largest flow-control window (RFC 9113 §6.9.1)."""


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """What a connection bounds: a message, a call's header list, streams at once."""

    max_message_bytes: int = 4_194_304
    max_header_list_bytes: int = 16_384
    max_concurrent_streams: int = 100

    def grpclib_config(self) -> Configuration:
        """grpclib's server configuration: the flow-control windows (unread bytes) of a
        stream and of a connection, the latter room for all its streams' windows."""
        return Configuration(
            http2_stream_window_size=STREAM_WINDOW_BYTES,
            http2_connection_window_size=min(
                STREAM_WINDOW_BYTES * self.max_concurrent_streams, MAX_WINDOW_BYTES
            ),
        )


def accept_calls(
    protocol: H2Protocol,
    limits: TransportLimits,
    early: EarlyCheck | None = None,
    observe: CallObserver | None = None,
) -> None:
    """Take over the calls of a freshly made grpclib server connection: apply ``limits``
    (sent to the client as SETTINGS), answer the requests ``check_request`` refuses and
    those ``early`` refuses (a valid request, from its headers), and give the others a
    ``CallStream``. ``observe`` hears every request's headers with its refusal (None: it
    went on). Neither ``early`` nor ``observe`` may raise."""
    connection = protocol.connection
    h2_connection = getattr(connection, "_connection", None)
    transport = getattr(connection, "_transport", None)
    processors = getattr(protocol.processor, "processors", None)
    if not isinstance(h2_connection, H2Connection) or not isinstance(processors, dict):
        return
    h2_connection.update_settings(
        {
            SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: HEADER_BLOCK_HARD_LIMIT,
        }
    )
    # h2 applies the advertised size once the client acknowledges it; a larger bound at
    # once cannot hurt a client that has not seen it yet
    h2_connection.decoder.max_header_list_size = HEADER_BLOCK_HARD_LIMIT
    connection.flush()
    register = protocol.processor.register
    accept = protocol.handler.accept

    def on_request(event: RequestReceived) -> None:
        headers = cast("Headers", event.headers)
        stream_id = event.stream_id
        fields = dict(headers)
        refusal = check_request(headers, fields, limits.max_header_list_bytes)
        if refusal is None and early is not None:
            refusal = early(headers)
        if observe is not None:
            observe(headers, refusal)
        if refusal is not None:
            _refuse(h2_connection, stream_id, headers, refusal, transport)
            return
        stream = CallStream(
            connection,
            h2_connection,
            transport,
            stream_id=stream_id,
            max_message_bytes=limits.max_message_bytes,
            encoding=fields.get("grpc-encoding"),
        )
        accept(stream, headers, register(stream))

    processors[RequestReceived] = cast("Callable[[RequestReceived], None]", on_request)


def _refuse(
    h2_connection: H2Connection,
    stream_id: int,
    headers: Headers,
    refusal: Refusal,
    transport: Any,
) -> None:
    """Answer a call trailers-only (or response metadata, then trailers), then reset it
    (NO_ERROR) unless the client has ended its side (the gRPC spec's "early server
    closure"); one short log line unless the refusal is ``quiet``."""
    status = [(":status", str(refusal.http_status)), ("content-type", _GRPC)]
    ending = [
        ("grpc-status", str(refusal.status.value)),
        ("grpc-message", encode_grpc_message(refusal.message)),
        *refusal.trailers,
    ]
    if refusal.initial:
        h2_connection.send_headers(stream_id, [*status, *refusal.initial])
        h2_connection.send_headers(stream_id, ending, end_stream=True)
    else:
        h2_connection.send_headers(stream_id, [*status, *ending], end_stream=True)
    stream = h2_connection.streams.get(stream_id)
    if stream is not None and not stream.closed:
        h2_connection.reset_stream(stream_id)
    if refusal.quiet:
        return
    path = next((value for name, value in headers if name == ":path"), "")
    peer = transport.get_extra_info("peername") if transport is not None else None
    log.info(
        "refused a gRPC call to %s from %s: %s %s",
        quoted(path),
        peer,
        refusal.status.name,
        refusal.message,
    )
