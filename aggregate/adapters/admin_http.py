"""The admin HTTP server (DESIGN §9.2): health, readiness, metrics and tenant administration.

A Quart-trio app served by hypercorn's Trio worker, on the Trio side of the service (§3).
It reads and changes the service only through ``AdminBackend``. ``/admin/*`` needs
``Authorization: Bearer <AGGREGATE_ADMIN_TOKEN>``; with no token configured it answers
loopback clients only. Every response is JSON (``/metrics`` excepted) and errors read
``{"error": "<what to fix>"}``, with HTTP codes from ``aggregate.domain.status``. The
request context (correlation id, traceparent, request id) is taken from the request headers
(or generated), echoed in the response headers and bound to the log lines of the request.
Requests are bounded and checked before routing (``aggregate.adapters.admin_guard``); an
error reason quotes at most a short part of what the client sent.

Status codes probes rely on: ``/ready`` and ``/admin/tenant/{id}/ready`` answer ``true``
with 200 and ``false`` with 503; a drain answers 200 when the tenant is empty and 202 when
the drain is in force but commands were still running at its timeout.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import hypercorn.trio
import trio
from hypercorn.config import Config
from quart import Quart, Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import (
    HTTPException,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    RequestTimeout,
)

from aggregate.adapters.admin_guard import (
    HttpLimits,
    RequestGuard,
    clip_reason,
    install_admin_protocol,
    shorten,
)
from aggregate.adapters.logging import log_levels, set_log_levels
from aggregate.application.admin import (
    parse_drain,
    parse_log_levels,
    parse_move,
    parse_programs_reload,
    parse_reload,
    parse_tenant_page,
)
from aggregate.domain.context import RequestContext
from aggregate.domain.errors import ConfigError, TenantUnavailableError
from aggregate.domain.ids import validate_tenant_id
from aggregate.domain.status import new_error_id, public_message, status_of
from aggregate.ingest.admin_routes import install_ingest_routes
from aggregate.logcontext import log_context

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from hypercorn.typing import (
        ASGIFramework,
        ASGIReceiveCallable,
        ASGISendCallable,
        ASGISendEvent,
        Scope,
    )

    from aggregate.application.admin import AdminBackend, DrainRequest, ProgramsBackend
    from aggregate.ingest.admin_routes import IngestAdmin

log = logging.getLogger(__name__)

_REALM = 'Bearer realm="aggregate-admin"'


class MetricsRenderer(Protocol):
    """What ``GET /metrics`` needs (``aggregate.adapters.metrics.Metrics`` is one)."""

    def render(self, accept: str | None = None) -> tuple[bytes, str]: ...


@dataclass(frozen=True, slots=True)
class Denial:
    """Why an ``/admin/*`` request is refused: HTTP status, reason, extra headers."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)


def is_loopback(host: str | None) -> bool:
    """True for a loopback IP address (IPv4, IPv6 or IPv4-mapped IPv6); names are not."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def admin_access_denial(scope: Mapping[str, Any], token: str | None) -> Denial | None:
    """Check an ``/admin/*`` request's ASGI scope; None when it may proceed.

    With a token: the ``Authorization: Bearer`` credentials must equal it (constant-time
    comparison), else 401 with ``WWW-Authenticate``. Without one: loopback clients only
    (the client address is the scope's ``client``), else 403.
    """
    if not token:
        client = scope.get("client")
        host = client[0] if client else None
        if is_loopback(host):
            return None
        return Denial(
            403,
            "AGGREGATE_ADMIN_TOKEN is not set, so /admin/* answers loopback clients only; "
            "set a token to manage this node remotely",
        )
    values = [v for k, v in scope.get("headers", ()) if k.lower() == b"authorization"]
    if not values:
        return Denial(
            401,
            "missing Authorization header: send 'Authorization: Bearer <AGGREGATE_ADMIN_TOKEN>'",
            {"WWW-Authenticate": _REALM},
        )
    scheme, _, credentials = values[0].decode("latin-1").strip().partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode("latin-1"), token.encode()
    ):
        return None
    return Denial(
        401,
        "the bearer token does not match AGGREGATE_ADMIN_TOKEN",
        {"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
    )


def _json(value: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(value, separators=(",", ":")),
        status,
        dict(headers or {}),
        content_type="application/json",
    )


def _error(
    reason: str, status: int, headers: Mapping[str, str] | None = None, **extra: object
) -> Response:
    return _json({"error": clip_reason(reason), **extra}, status, headers)


def _http_error_reason(exc: HTTPException, limits: HttpLimits) -> str:
    path = shorten(request.path, 60)
    if isinstance(exc, NotFound):
        return (
            f"no endpoint at {path}; this server answers /health, /ready, /metrics and the "
            "admin API under /admin/ (tenants, tenant/{id}/..., drain, reload, programs, "
            "shards, ingest, log-level)"
        )
    if isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(exc.valid_methods or ()))
        return f"{shorten(request.method, 20)} is not allowed on {path}; use {allowed}"
    if isinstance(exc, RequestEntityTooLarge):
        return f"request body is larger than {limits.max_body_bytes} bytes"
    if isinstance(exc, RequestTimeout):
        return f"request body did not arrive within {limits.body_timeout_s:g} s"
    return exc.description or exc.name


def build_app(
    backend: AdminBackend,
    *,
    token: str | None,
    metrics: MetricsRenderer,
    drain_timeout_s: float,
    limits: HttpLimits,
    programs: ProgramsBackend | None = None,
    move_timeout_s: float = 30.0,
    ingest: IngestAdmin | None = None,
) -> Quart:
    """The Quart app of the admin API (without the guard and context middlewares);
    ``/admin/programs`` routes only with ``programs``."""
    app: Quart = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes
    app.config["BODY_TIMEOUT"] = limits.body_timeout_s

    @app.before_request
    async def require_admin_access() -> Response | None:
        path = request.path
        if path == "/admin" or path.startswith("/admin/"):
            denial = admin_access_denial(request.scope, token)
            if denial is not None:
                return _error(denial.reason, denial.status, denial.headers)
        return None

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return _error(_http_error_reason(exc, limits), exc.code or 500)

    @app.errorhandler(Exception)
    async def failure(exc: Exception) -> Response:
        name, code = status_of(exc)
        error_id = new_error_id() if name == "INTERNAL" else None
        if code >= 500:
            log.error(
                "admin request %s %s failed%s",
                request.method,
                request.path,
                f" (error id {error_id})" if error_id else "",
                exc_info=exc,
                extra={"error_id": error_id} if error_id else None,
            )
        message = public_message(exc, error_id=error_id)
        if isinstance(exc, TenantUnavailableError) and exc.owner:
            return _error(message, code, owner=exc.owner)
        return _error(message, code)

    @app.get("/health")
    async def health() -> Response:
        return _json(backend.health())

    @app.get("/ready")
    async def ready() -> Response:
        is_ready = backend.ready()
        return _json(is_ready, 200 if is_ready else 503)

    @app.get("/metrics")
    async def metrics_text() -> Response:
        body, content_type = metrics.render(request.headers.get("Accept"))
        return Response(body, 200, content_type=content_type)

    @app.get("/admin/tenants")
    async def tenants() -> Response:
        wanted = parse_tenant_page(request.query_string)
        listing = await backend.tenants(wanted)
        headers = {}
        if listing.next_after is not None:
            # Tenant ids are [A-Za-z0-9_-]: safe in a URL as they are.
            headers["Link"] = (
                f'</admin/tenants?after={listing.next_after}&limit={wanted.limit}>; rel="next"'
            )
        return _json(listing.tenants, headers=headers)

    @app.post("/admin/drain")
    async def drain() -> Response:
        body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        return await _drain(parse_drain(body, tenant_id=None, default_timeout_s=drain_timeout_s))

    @app.post("/admin/reload")
    async def reload() -> Response:
        body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        wanted = parse_reload(body)
        log.info(
            "admin reload requested",
            extra={"hosted_tenants": wanted.hosted_tenants, "placement": wanted.placement},
        )
        return _json(await backend.reload(wanted.hosted_tenants, wanted.placement))

    @app.get("/admin/log-level")
    async def log_level() -> Response:
        return _json(log_levels().as_dict())

    @app.post("/admin/log-level")
    async def set_log_level() -> Response:
        body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        wanted = parse_log_levels(body)
        levels = set_log_levels(wanted.level, wanted.library_level)
        log.info("log levels set: service %s, libraries %s", levels.level, levels.library_level)
        return _json(levels.as_dict())

    @app.get("/admin/tenant/<tenant_id>/status")
    async def tenant_status(tenant_id: str) -> Response:
        return _json(await backend.tenant_status(validate_tenant_id(tenant_id)))

    @app.get("/admin/tenant/<tenant_id>/ready")
    async def tenant_ready(tenant_id: str) -> Response:
        tenant_id = validate_tenant_id(tenant_id)
        is_ready = backend.ready() and (await backend.tenant_status(tenant_id))["accepting"]
        return _json(is_ready, 200 if is_ready else 503)

    @app.post("/admin/tenant/<tenant_id>/drain")
    async def tenant_drain(tenant_id: str) -> Response:
        body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        return await _drain(
            parse_drain(body, tenant_id=tenant_id, default_timeout_s=drain_timeout_s)
        )

    if programs is not None:

        @app.get("/admin/programs")
        async def program_list() -> Response:
            return _json(await programs.programs())

        @app.post("/admin/programs/reload")
        async def programs_reload() -> Response:
            body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
            rebuild = parse_programs_reload(request.args.to_dict(flat=False), body)
            log.info("admin program reload requested (rebuild: %s)", rebuild)
            return _json(await programs.reload_programs(rebuild))

    @app.post("/admin/tenant/<tenant_id>/accept")
    async def tenant_accept(tenant_id: str) -> Response:
        return _json(await backend.accept_tenant(validate_tenant_id(tenant_id)))

    @app.post("/admin/tenant/<tenant_id>/move")
    async def tenant_move(tenant_id: str) -> Response:
        body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        wanted = parse_move(body, tenant_id=tenant_id, default_timeout_s=move_timeout_s)
        log.info(
            "admin move of tenant %s to shard %s (up to %.3fs)",
            wanted.tenant_id,
            wanted.to_shard,
            wanted.timeout_s,
            extra={"tenant_id": wanted.tenant_id},
        )
        return _json(await backend.move_tenant(wanted.tenant_id, wanted.to_shard, wanted.timeout_s))

    @app.get("/admin/shards")
    async def shards() -> Response:
        return _json(await backend.shards())

    async def _drain(wanted: DrainRequest) -> Response:
        log.info(
            "admin drain of tenant %s (waiting up to %.3fs)",
            wanted.tenant_id,
            wanted.timeout_s,
            extra={"tenant_id": wanted.tenant_id},
        )
        report = await backend.drain_tenant(wanted.tenant_id, wanted.timeout_s)
        # 202: the drain is in force but commands are still running.
        return _json(report, 200 if report["drained"] else 202)

    install_ingest_routes(app, ingest)
    return app


class RequestContextMiddleware:
    """ASGI middleware: binds the request context to the request's log lines and echoes
    it in the response headers (DESIGN §8)."""

    def __init__(self, app: ASGIFramework) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        context = RequestContext.from_headers(headers)
        echoed = [(k.encode(), v.encode()) for k, v in context.response_headers().items()]

        async def send_with_context(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], *echoed]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # hypercorn re-arms the connection's keep-alive watcher from inside this
                # send; quart-trio cancels the request's nursery right after, which would
                # kill that watcher, so idle connections would outlive a shutdown by
                # ``graceful_timeout``. hypercorn shields its own socket writes already.
                with trio.CancelScope(shield=True):
                    await send(message)
                return
            await send(message)

        with log_context(
            correlation_id=context.correlation_id,
            trace_id=context.trace_id,
            request_id=context.request_id,
        ):
            await self.app(scope, receive, send_with_context)


async def _bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening), handed to hypercorn.

    Binding here rather than in hypercorn gives the real port before serving starts and
    closes the socket when the bind fails.

    Raises:
        ConfigError: the host does not resolve or the address cannot be bound.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    hint = "set AGGREGATE_HTTP_ADDR to a free local address"
    try:
        infos = await trio.socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ConfigError(f"admin HTTP address {where} does not resolve: {exc}; {hint}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"admin HTTP cannot listen on {where}: {exc.strerror or exc}; {hint}"
        ) from None
    return sock


class AdminServer:
    """Serves the admin API on ``host:port`` (port 0: any free port, as tests bind).

    ``drain_timeout_s`` is the wait of a drain that names no ``timeout_ms``;
    ``graceful_timeout_s`` bounds how long requests still running at shutdown may take;
    ``limits`` bound each request (``aggregate.adapters.admin_guard``). The server speaks
    HTTP/1.1 only.
    """

    def __init__(
        self,
        backend: AdminBackend,
        *,
        token: str | None,
        host: str,
        port: int,
        metrics: MetricsRenderer,
        drain_timeout_s: float = 10.0,
        graceful_timeout_s: float = 2.0,
        limits: HttpLimits | None = None,
        programs: ProgramsBackend | None = None,
        move_timeout_s: float = 30.0,
        ingest: IngestAdmin | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.graceful_timeout_s = graceful_timeout_s
        self.limits = limits or HttpLimits()
        self.quart_app = build_app(
            backend,
            token=token,
            metrics=metrics,
            drain_timeout_s=drain_timeout_s,
            limits=self.limits,
            programs=programs,
            move_timeout_s=move_timeout_s,
            ingest=ingest,
        )
        self.app = RequestContextMiddleware(RequestGuard(self.quart_app, self.limits))
        self.address: tuple[str, int] | None = None
        """The bound (host, port), once ``serve`` has started."""

    async def serve(
        self,
        *,
        shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until ``shutdown_trigger`` returns (or until cancelled).

        Calls ``task_status.started((host, port))`` once the socket is bound and listening.
        After the trigger, new connections are refused, idle ones closed, and requests
        still running get ``graceful_timeout_s`` before they are cancelled. Cancellation
        stops the server at once.

        Raises:
            ConfigError: the address cannot be bound (in use, not local, no permission).
        """
        sock = await _bound_socket(self.host, self.port)
        bound_host, bound_port = sock.getsockname()[:2]
        config = Config()
        # hypercorn adopts the descriptor (and closes it when it stops serving).
        config.bind = [f"fd://{sock.detach()}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = self.graceful_timeout_s
        config.include_server_header = False
        config.h11_max_incomplete_size = self.limits.max_header_bytes
        install_admin_protocol()
        serve = partial(hypercorn.trio.serve, self.app, config, shutdown_trigger=shutdown_trigger)
        async with trio.open_nursery() as nursery:
            await nursery.start(serve)
            self.address = (bound_host, bound_port)
            log.info("admin HTTP listening on %s:%d", bound_host, bound_port)
            task_status.started(self.address)
