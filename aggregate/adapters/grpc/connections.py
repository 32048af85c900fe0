"""The gRPC server's HTTP/2 connections: tracked for the drain, guarded against hostile input.

``DrainableServer`` is grpclib's ``Server`` making a ``TrackedProtocol`` per accepted
connection. Each one is registered while open, can wait for a PING round trip (``settle``)
and send GOAWAY (``goaway``) for ``CommandServer.drain``; it gives h2 the
``ResponseHeaderEncoder`` (``aggregate.adapters.grpc.headers``) and installs the
transport's handling of hostile input (limits, framing, bad headers:
``aggregate.adapters.grpc.transport``); its ``data_received`` sends
h2's GOAWAY before an HTTP/2 connection error closes the connection; it stops reading a
client while what it sends that client is not being read (asyncio's write buffer is over
its high-water mark), and while the connection owes its tenant's refusal budget
(``aggregate.adapters.grpc.pacing``).

grpclib internals used here: the ``Server._protocol_factory`` override (to see
connections), ``Connection._connection`` (the h2 state machine) and
``EventsProcessor.processors`` (to hear PING acknowledgements). See
``aggregate.adapters.grpc.server`` for what happens when they change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, cast

import h2.exceptions
from grpclib.protocol import H2Protocol
from grpclib.server import Server
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import PingAckReceived

from aggregate.adapters.grpc.headers import ResponseHeaderEncoder
from aggregate.adapters.grpc.pacing import (
    SLICE_BYTES,
    ReadPacing,
    RefusalPacer,
    tenant_header,
)
from aggregate.adapters.grpc.transport import (
    TransportLimits,
    accept_calls,
    quoted,
    server_h2_config,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from grpclib._typing import IServable
    from grpclib.config import Configuration
    from grpclib.protocol import AbstractHandler
    from h2.config import H2Configuration

    from aggregate.adapters.grpc.transport import EarlyCheck, Headers, Refusal

log = logging.getLogger(__name__)

SHUTTING_DOWN = "server is shutting down; retry on another node"


class TrackedProtocol(H2Protocol):
    """grpclib's server connection protocol, registered in a set while it is open, that
    can wait for a PING round trip (``settle``) and send GOAWAY (``goaway``), with the
    transport's checks (``accept_calls``)."""

    def __init__(
        self,
        handler: AbstractHandler,
        config: Configuration,
        h2_config: H2Configuration,
        registry: set[TrackedProtocol],
        limits: TransportLimits,
        early: EarlyCheck | None = None,
        pacer: RefusalPacer | None = None,
    ) -> None:
        super().__init__(handler, config, h2_config)
        self._registry = registry
        self._limits = limits
        self._early = early
        self._pacing = ReadPacing(pacer) if pacer is not None and pacer.enabled else None
        self._held = bytearray()
        """Input received but not yet fed to h2: the connection owes its refusal budget."""
        self._resume: asyncio.TimerHandle | None = None
        self._writing_paused = False
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        self.socket: socket.socket | None = None
        self._transport: asyncio.Transport | None = None
        self._hears_pings = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio only turns Nagle off for sockets created with proto=IPPROTO_TCP, and the
        # listening socket from socket.create_server has proto=0: without this every
        # response waits for the client's delayed ACK (~40 ms on Linux loopback).
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket = sock
        self._transport = cast("asyncio.Transport", transport)
        super().connection_made(transport)
        h2_connection = getattr(self.connection, "_connection", None)
        if isinstance(h2_connection, H2Connection):
            h2_connection.encoder = ResponseHeaderEncoder()
        processors = getattr(self.processor, "processors", None)
        if isinstance(processors, dict) and PingAckReceived in processors:
            on_ack = cast("Callable[[PingAckReceived], None]", processors[PingAckReceived])

            def on_ping_ack(event: PingAckReceived) -> None:
                on_ack(event)
                waiter = self._pings.pop(event.ping_data, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

            processors[PingAckReceived] = on_ping_ack
            self._hears_pings = True
        observe = self._observe if self._pacing is not None else None
        accept_calls(self, self._limits, self._early, observe)
        self._registry.add(self)

    def _observe(self, headers: Headers, refusal: Refusal | None) -> None:
        pacing = self._pacing
        if pacing is not None:
            refused = refusal.quota_tenant if refusal is not None else None
            rate = refusal.quota_rate if refusal is not None else 0.0
            pacing.observe(tenant_header(headers), refused, rate, time.monotonic())

    def data_received(self, data: bytes) -> None:
        pacing = self._pacing
        if pacing is None or (not self._held and not pacing.slicing(time.monotonic())):
            self._feed(data)
            return
        self._held += data
        self._feed_held()

    def _feed_held(self) -> None:
        """Feed the held input to h2, a slice at a time, until the connection owes its
        refusal budget (then stop reading and come back when it is paid) or none is left."""
        pacing, held = self._pacing, self._held
        assert pacing is not None
        while held:
            if self._writing_paused:  # resume_writing comes back here
                return
            if self.connection.is_closing():
                held.clear()
                return
            now = time.monotonic()
            if pacing.must_wait(now):
                if self._transport is not None:
                    self._transport.pause_reading()
                if self._resume is None:
                    loop = asyncio.get_running_loop()
                    self._resume = loop.call_later(pacing.resume_at - now, self._paid)
                return
            size = SLICE_BYTES if pacing.slicing(now) else len(held)
            chunk = bytes(held[:size])
            del held[:size]
            if not self._feed(chunk):
                held.clear()
                return
        if self._transport is not None and not self._writing_paused:
            self._transport.resume_reading()

    def _paid(self) -> None:
        self._resume = None
        self._feed_held()

    def _feed(self, data: bytes) -> bool:
        """Feed ``data`` to h2 and process its events; False if it closed the connection."""
        # grpclib's, except that a connection error sends h2's GOAWAY before closing and
        # logs one line (grpclib closed without it and logged a traceback at debug level)
        try:
            events = self.connection.feed(data)
        except h2.exceptions.ProtocolError as exc:
            log.info(
                "closed an HTTP/2 connection from %s: %s",
                self.connection.get_peer().addr(),
                quoted(str(exc)),
            )
            self.connection.flush()
            self.processor.close("Protocol error")
            return False
        self.connection.flush()
        # Frames grpclib has no processor for (an unknown frame type, ALTSVC) are ignored, as
        # HTTP/2 requires (RFC 9113 §5.5); grpclib raised NotImplementedError, which killed
        # the connection with every call on it and logged a traceback.
        processors = getattr(self.processor, "processors", None)
        for event in events:
            if processors is not None and type(event) not in processors:
                continue
            self.processor.process(event)
        self.connection.flush()
        return True

    def pause_writing(self) -> None:
        # Stop reading a client that does not read what it is sent: h2 answers PING and
        # SETTINGS frames by itself, so a client sending them without reading grew the write
        # buffer without bound (40 MB of PINGs: 37 MB buffered). Reading resumes with writing.
        super().pause_writing()
        self._writing_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._writing_paused = False
        if self._held:
            if self._resume is None:  # else when the debt is paid
                self._feed_held()
        elif self._transport is not None:
            self._transport.resume_reading()

    def _h2(self) -> H2Connection | None:
        """The connection's h2 state machine, unless it is closing (or grpclib changed)."""
        if self.connection.is_closing():
            return None
        h2_connection = getattr(self.connection, "_connection", None)
        return h2_connection if isinstance(h2_connection, H2Connection) else None

    async def settle(self) -> None:
        """Wait for a PING round trip. Once the client acknowledges it, it has processed
        every frame sent before: the GOAWAY that follows cannot overtake the last responses
        in the client (grpclib's client fails every stream of a connection on GOAWAY, even
        streams whose response it has received but not yet handed to the caller)."""
        h2_connection = self._h2()
        if h2_connection is None or not self._hears_pings:
            return
        data = os.urandom(8)
        waiter = self._pings[data] = asyncio.get_running_loop().create_future()
        h2_connection.ping(data)
        self.connection.flush()
        try:
            await waiter
        finally:
            self._pings.pop(data, None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._registry.discard(self)
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self._held.clear()
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.set_result(None)
        super().connection_lost(exc)

    def goaway(self) -> None:
        """Send GOAWAY (no error; last stream = the last one the client opened), then close
        the connection: its remaining streams end, the client reconnects elsewhere."""
        h2_connection = self._h2()
        if h2_connection is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                h2_connection.close_connection(
                    error_code=ErrorCodes.NO_ERROR, additional_data=SHUTTING_DOWN.encode()
                )
            self.connection.flush()
        self.processor.close(SHUTTING_DOWN)
        self._registry.discard(self)


class DrainableServer(Server):
    """grpclib's ``Server``, remembering its open connections for the drain's GOAWAY; its
    connections decode headers as the transport wants (``server_h2_config``), enforce
    ``limits`` and spend ``pacer``'s refusal budgets."""

    def __init__(
        self,
        handlers: Collection[IServable],
        connections: set[TrackedProtocol],
        limits: TransportLimits,
        early: EarlyCheck | None = None,
        pacer: RefusalPacer | None = None,
    ):
        super().__init__(handlers, config=limits.grpclib_config())
        self.connections = connections
        self._limits = limits
        self._early = early
        self._pacer = pacer
        self._transport_h2_config = server_h2_config()

    def _protocol_factory(self) -> H2Protocol:
        plain = super()._protocol_factory()
        return TrackedProtocol(
            plain.handler,
            plain.config,
            self._transport_h2_config,
            self.connections,
            self._limits,
            self._early,
            self._pacer,
        )
