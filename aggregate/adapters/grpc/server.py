"""The gRPC command server on the asyncio island, with a graceful drain (DESIGN §3).

Serves ``CommandService`` and ``QueryService``, the standard ``grpc.health.v1.Health``
(readiness switchable) and server reflection. grpclib's own ``Server.close()`` is not
graceful (grpclib issues #107 and #148; the fix, PR #190, is not merged): it cancels
in-flight calls and leaves accepted HTTP/2 connections open, so calls keep arriving after
``wait_closed()``. ``CommandServer.drain`` works around it with a wrapper around the
services' methods plus one override:

a. every ``CommandService`` method is wrapped (once, when the server is built) so that it
   refuses new calls with UNAVAILABLE once the drain begins (health and reflection keep
   answering: health says NOT_SERVING), and counts the calls it lets through;
b. the drain waits for those calls (open ``SubmitCommands`` streams stop reading and answer
   what they read), up to a grace period; grpclib then cancels what is left, and those
   calls are answered UNAVAILABLE ("may or may not have been applied");
c. ``Server.close()`` then closes the listening socket;
d. each accepted connection gets an HTTP/2 PING and, once the client acknowledges it (it
   has processed the last responses), a GOAWAY; then it is closed, so clients reconnect
   elsewhere.

grpclib internals this relies on (grpclib 0.4.x), all in ``TrackedProtocol`` and
``DrainableServer`` (``aggregate.adapters.grpc.connections``): the
``Server._protocol_factory`` override (to see connections), ``Connection._connection``
(the h2 state machine, to send PING and GOAWAY, and to give it the
``ResponseHeaderEncoder``) and ``EventsProcessor.processors`` (to hear PING
acknowledgements). If they change, the drain degrades to closing connections without
PING/GOAWAY and responses keep hpack's default encoder, rather than breaking the server;
``tests/integration/test_grpc_drain.py`` and ``test_grpc_api.py`` fail. The drain test's
strict xfail runs the same scenario on plain ``Server.close()``: when grpclib is fixed, that
test says so.

The same connections carry the transport's handling of hostile input (limits, framing, bad
headers: ``aggregate.adapters.grpc.transport``), and refuse the commands a tenant over its
quota or an open breaker would refuse from their headers alone
(``aggregate.adapters.grpc.early``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import anyio
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection

from aggregate.adapters.grpc.connections import SHUTTING_DOWN, DrainableServer, TrackedProtocol
from aggregate.adapters.grpc.convert import TrailedError
from aggregate.adapters.grpc.early import EarlyRefusals
from aggregate.adapters.grpc.query_service import QueryService
from aggregate.adapters.grpc.service import CommandService, GrpcOptions
from aggregate.adapters.grpc.tracing import traced
from aggregate.adapters.grpc.transport import TransportLimits
from aggregate.domain.errors import ConfigError

if TYPE_CHECKING:
    from anyio.abc import TaskStatus
    from grpclib._typing import IServable, IServerMethodFunc
    from grpclib.const import Handler
    from grpclib.server import Server, Stream
    from opentelemetry.trace import Tracer

    from aggregate.application.handler import CommandHandler
    from aggregate.application.observe import CommandObserver
    from aggregate.query.indexer import Indexer

log = logging.getLogger(__name__)

CUT_OFF = (
    "server shut down before this call finished; its command may or may not have been "
    "applied: retry it with the same command_id on another node"
)


class _CallTracker:
    """Counts ``CommandService`` calls in flight; refuses new ones once draining; answers
    the calls a drain cancels with UNAVAILABLE rather than leaving them without a status."""

    def __init__(self) -> None:
        self.refusing = False
        self.cancelling = False
        self.active = 0
        self._idle = asyncio.Event()

    def tracked(self, method: IServerMethodFunc) -> IServerMethodFunc:
        """``method``, refused with UNAVAILABLE once draining, counted while it runs."""

        async def tracked(stream: Stream[Any, Any]) -> None:
            if self.refusing:
                raise GRPCError(Status.UNAVAILABLE, SHUTTING_DOWN)
            self.active += 1
            try:
                await method(stream)
            except TrailedError as exc:
                await stream.send_trailing_metadata(
                    status=exc.status, status_message=exc.message, metadata=exc.trailers
                )
            except asyncio.CancelledError:
                if self.cancelling:
                    with contextlib.suppress(Exception):
                        await stream.send_trailing_metadata(
                            status=Status.UNAVAILABLE, status_message=CUT_OFF
                        )
                raise
            finally:
                self.active -= 1
                if self.active == 0:
                    self._idle.set()

        return tracked

    async def wait_idle(self) -> None:
        while self.active:
            self._idle.clear()
            await self._idle.wait()


class _TrackedService:
    """``CommandService`` (or ``QueryService``) as grpclib serves it, each method wrapped by
    ``_CallTracker.tracked`` once, when the server is built (a ``RecvRequest`` listener would
    do the same work on every call: grpclib builds an event object per request once anything
    listens)."""

    def __init__(self, service: CommandService | QueryService, calls: _CallTracker) -> None:
        self._service = service
        self._calls = calls

    def __mapping__(self) -> dict[str, Handler]:
        tracer = self._service.tracer
        mapping = {}
        for path, handler in self._service.__mapping__().items():
            func = self._calls.tracked(handler.func)
            if tracer is not None:  # outermost: refused and cut-off calls get spans too
                func = traced(tracer, path, func)
            mapping[path] = handler._replace(func=func)
        return mapping


class CommandServer:
    """The gRPC server of the service: ``CommandService``, health and reflection.

    Runs on the asyncio island; every method must be called on that loop. ``serve`` (or
    ``start``) binds ``options.host:options.port`` (port 0 picks a free port; ``address``
    reports it); ``drain`` stops it gracefully.
    """

    def __init__(
        self,
        handler: CommandHandler,
        options: GrpcOptions | None = None,
        *,
        observer: CommandObserver | None = None,
        tracer: Tracer | None = None,
        queries: Indexer | None = None,
    ) -> None:
        self.options = options or GrpcOptions()
        self.service = CommandService(handler, self.options, observer=observer, tracer=tracer)
        self.service.settle = self._settle_all
        self.queries = QueryService(self.service, queries)
        self.early = EarlyRefusals(self.service, lambda: self._calls.refusing)
        """Commands refused from their headers, before grpclib runs a call for them."""
        self.pacer = self.service.pacer
        """Each tenant's budget of quota refusals read at full speed (its connections'
        and its streams')."""
        self.readiness = ServiceStatus()
        self._calls = _CallTracker()
        self._connections: set[TrackedProtocol] = set()
        self._server: DrainableServer | None = None
        self._address: tuple[str, int] | None = None
        self._drain: asyncio.Task[bool] | None = None
        self._stopped = asyncio.Event()

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``. Raises: RuntimeError before ``start``."""
        if self._address is None:
            raise RuntimeError("the gRPC server is not started")
        return self._address

    @property
    def server(self) -> Server:
        """The underlying grpclib server (events, tests). Raises: RuntimeError before start."""
        if self._server is None:
            raise RuntimeError("the gRPC server is not started")
        return self._server

    @property
    def in_flight_calls(self) -> int:
        """``CommandService`` calls running now (a stream counts once)."""
        return self._calls.active

    def set_serving(self, serving: bool) -> None:
        """Readiness as the health service reports it: SERVING or NOT_SERVING."""
        self.readiness.set(serving)

    async def start(self) -> tuple[str, int]:
        """Bind and start serving; readiness becomes SERVING. Returns the bound address.

        Raises:
            ConfigError: the address cannot be bound (in use, not local, ...).
            RuntimeError: already started.
        """
        if self._server is not None:
            raise RuntimeError("the gRPC server is already started")
        health = Health({self.service: [self.readiness], self.queries: [self.readiness]})
        services: list[IServable] = [
            _TrackedService(self.service, self._calls),
            _TrackedService(self.queries, self._calls),
            health,
        ]
        server = DrainableServer(
            ServerReflection.extend(services),
            self._connections,
            TransportLimits(
                max_message_bytes=self.options.max_message_bytes,
                max_header_list_bytes=self.options.max_header_list_bytes,
                max_concurrent_streams=self.options.max_concurrent_streams,
            ),
            self.early,
            self.pacer,
        )
        sock = await _listening_socket(self.options.host, self.options.port)
        try:
            await server.start(sock=sock)
        except BaseException:
            sock.close()
            raise
        self._server = server
        host, port = sock.getsockname()[:2]
        self._address = (host, port)
        self.readiness.set(True)
        log.info("gRPC server listening on %s:%d", host, port)
        return self._address

    async def serve(
        self, *, task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start, report the bound address through ``task_status``, and return once a
        ``drain`` has finished.

        Raises:
            ConfigError: as ``start``.

        Cancellation: the server closes at once (in-flight calls are cancelled, connections
        closed); use ``drain`` first for a graceful stop.
        """
        address = await self.start()
        task_status.started(address)
        try:
            await self._stopped.wait()
        finally:
            if not self._stopped.is_set():
                self._close_now()

    @property
    def draining(self) -> bool:
        """True once a drain has begun (new ``CommandService`` calls are refused)."""
        return self._calls.refusing

    def begin_drain(self) -> None:
        """The first, immediate step of ``drain``: readiness NOT_SERVING, new
        ``CommandService`` calls refused with UNAVAILABLE, open streams stop reading.
        ``drain`` calls it too; calling it first lets the service flip readiness at once."""
        self.readiness.set(False)
        self._calls.refusing = True
        self.service.stop_streams()
        if self.queries.watches is not None:  # open watches end now, with a resume position
            self.queries.watches.hub.close()

    async def drain(self, grace: float) -> bool:
        """Stop gracefully: readiness NOT_SERVING and new ``CommandService`` calls refused
        with UNAVAILABLE at once; in-flight calls finish (open streams answer what they
        read, then end with UNAVAILABLE) for up to ``grace`` seconds, then the rest are
        cancelled; then the listening socket closes and every connection gets GOAWAY and is
        closed. Calling it again waits for the first drain.

        Returns True when every in-flight call finished within ``grace``.

        Raises:
            RuntimeError: the server was never started.

        Cancellation: the server closes at once, as when ``serve`` is cancelled.
        """
        if self._server is None:
            raise RuntimeError("the gRPC server is not started")
        if self._drain is None:
            self.begin_drain()
            self._drain = asyncio.get_running_loop().create_task(self._drain_steps(grace))
        try:
            return await asyncio.shield(self._drain)
        except asyncio.CancelledError:
            self._drain.cancel()
            raise

    async def aclose(self) -> None:
        """Stop without grace: ``drain(0)``."""
        if self._server is not None:
            await self.drain(0)

    async def _drain_steps(self, grace: float) -> bool:
        server = self.server
        try:
            finished = True
            try:
                if self._calls.active:
                    await asyncio.wait_for(self._calls.wait_idle(), grace)
            except TimeoutError:
                finished = False
                self._calls.cancelling = True
                log.warning(
                    "drain: %d gRPC calls still running after %.1f s; cancelling them",
                    self._calls.active,
                    grace,
                )
            server.close()
            await self._settle_all()
            self._goaway_all()
            await server.wait_closed()
            return finished
        except BaseException:
            self._close_now()
            raise
        finally:
            self._stopped.set()

    def _close_now(self) -> None:
        server = self._server
        if server is None:
            return
        self.readiness.set(False)
        self._calls.refusing = True
        self._calls.cancelling = True
        with contextlib.suppress(RuntimeError):
            server.close()
        self._goaway_all()

    async def _settle_all(self) -> None:
        """PING every connection and wait for the acknowledgements, up to
        ``options.settle_timeout`` (a client that does not answer is closed anyway)."""
        if self._connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(c.settle() for c in list(self._connections))),
                    self.options.settle_timeout,
                )

    def _goaway_all(self) -> None:
        for protocol in list(self._connections):
            protocol.goaway()


async def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket for ``host:port`` (the family follows the host).

    Raises:
        ConfigError: the host does not resolve or the address cannot be bound.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    hint = "set AGGREGATE_GRPC_ADDR to a free local address"
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ConfigError(f"gRPC address {where} does not resolve: {exc}; {hint}") from None
    family, _, _, _, sockaddr = infos[0]
    try:
        return socket.create_server(sockaddr[:2], family=family, backlog=128)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"gRPC cannot listen on {where}: {reason}; {hint}") from None
