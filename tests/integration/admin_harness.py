"""A real admin HTTP server on loopback for tests, and HTTP/1.1 clients to talk to it.

The backend is a recording fake (``FakeBackend``); ``running`` serves an ``AdminServer`` on
a free port until the block ends. ``request`` is a well-formed h11 exchange; ``raw_request``
sends bytes exactly as given (malformed requests, HTTP/2 prefaces) and reads the answer.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import h11
import trio
from prometheus_client import CollectorRegistry

from aggregate.adapters.admin_guard import HttpLimits
from aggregate.adapters.admin_http import AdminServer
from aggregate.adapters.metrics import Metrics
from aggregate.application.admin import TenantListing

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aggregate.application.admin import (
        DrainReport,
        HealthReport,
        MoveReportView,
        ReloadReport,
        ShardView,
        TenantPage,
        TenantStatusView,
    )

TOKEN = "s3cret-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]
IO_TIMEOUT_S = 10


def status_view(tenant: str, *, accepting: bool = True, in_flight: int = 0) -> TenantStatusView:
    return {
        "tenant_id": tenant,
        "hosted": accepting,
        "accepting": accepting,
        "draining": False,
        "in_flight": in_flight,
        "owner": None,
        "aggregates_cached": 0,
        "aggregates_snapshotted": 0,
        "commands_total": 0,
        "last_activity": None,
    }


class FakeBackend:
    """Answers from plain fields and records every async call."""

    def __init__(self) -> None:
        self.is_ready = True
        self.statuses = {"acme": status_view("acme"), "globex": status_view("globex")}
        self.still_in_flight = 0
        self.error: Exception | None = None
        self.calls: list[tuple[object, ...]] = []

    def health(self) -> HealthReport:
        return {
            "status": "ok" if self.is_ready else "starting",
            "ready": self.is_ready,
            "nats_connected": True,
            "uptime_seconds": 12.5,
            "version": "0.1.0",
            "shard_id": "shard-a",
            "storage": {
                "reachable": True,
                "writable": True,
                "last_error": None,
                "last_error_at": None,
                "checked_at": "2026-01-02T03:04:05.678Z",
            },
            "active_aggregates": 3,
            "snapshot_lag": 0,
            "snapshot_lag_seconds": 0.0,
        }

    def ready(self) -> bool:
        return self.is_ready

    def _maybe_fail(self) -> None:
        if self.error is not None:
            raise self.error

    async def tenants(self, page: TenantPage) -> TenantListing:
        """Pages like the service: ids after ``page.after``, at most ``page.limit``."""
        self.calls.append(("tenants", page))
        names = [n for n in sorted(self.statuses) if page.after is None or n > page.after]
        chosen = names[: page.limit]
        more = len(names) > page.limit
        return TenantListing([self.statuses[n] for n in chosen], chosen[-1] if more else None)

    async def tenant_status(self, tenant_id: str) -> TenantStatusView:
        self.calls.append(("tenant_status", tenant_id))
        self._maybe_fail()
        return self.statuses.get(tenant_id, status_view(tenant_id, accepting=False))

    async def drain_tenant(self, tenant_id: str, timeout_s: float) -> DrainReport:
        self.calls.append(("drain_tenant", tenant_id, timeout_s))
        self._maybe_fail()
        return {
            "tenant_id": tenant_id,
            "drained": self.still_in_flight == 0,
            "in_flight": self.still_in_flight,
            "reopened": False,
            "owner": None,
        }

    async def reload(
        self, hosted_tenants: list[str] | None, placement: dict[str, str] | None
    ) -> ReloadReport:
        self.calls.append(("reload", hosted_tenants, placement))
        self._maybe_fail()
        return {"arrived": sorted(hosted_tenants or []), "left": []}

    async def accept_tenant(self, tenant_id: str) -> TenantStatusView:
        self.calls.append(("accept_tenant", tenant_id))
        self._maybe_fail()
        return self.statuses.get(tenant_id, status_view(tenant_id, accepting=True))

    async def move_tenant(self, tenant_id: str, to_shard: str, timeout_s: float) -> MoveReportView:
        self.calls.append(("move_tenant", tenant_id, to_shard, timeout_s))
        self._maybe_fail()
        return {
            "tenant_id": tenant_id,
            "to": to_shard,
            "moved": True,
            "drained": True,
            "in_flight": 0,
            "window_ms": 1.5,
        }

    async def shards(self) -> list[ShardView]:
        self.calls.append(("shards",))
        return []


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)


async def request(
    port: int,
    method: str,
    path: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
) -> Reply:
    """One HTTP/1.1 exchange with h11 over a Trio TCP stream."""
    with trio.fail_after(IO_TIMEOUT_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            sent = [("host", "127.0.0.1"), ("connection", "close"), *(headers or [])]
            if body is not None:
                sent.append(("content-length", str(len(body))))
            await stream.send_all(conn.send(h11.Request(method=method, target=path, headers=sent)))
            if body is not None:
                await stream.send_all(conn.send(h11.Data(data=body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            return await read_reply(stream, conn)


async def read_reply(stream: trio.SocketStream, conn: h11.Connection) -> Reply:
    status, got, data = 0, {}, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some())
        elif isinstance(event, h11.Response):
            status = event.status_code
            got = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            data += event.data
        elif isinstance(event, h11.EndOfMessage):
            return Reply(status, got, data)
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionError("the server closed the connection without a full response")


def make_server(
    backend: FakeBackend,
    token: str | None = TOKEN,
    metrics: Metrics | None = None,
    graceful_timeout_s: float = 2.0,
    limits: HttpLimits | None = None,
) -> AdminServer:
    return AdminServer(
        backend,
        token=token,
        host="127.0.0.1",
        port=0,
        metrics=metrics or Metrics(CollectorRegistry()),
        drain_timeout_s=10.0,
        graceful_timeout_s=graceful_timeout_s,
        limits=limits or HttpLimits(),
    )


@asynccontextmanager
async def running(server: AdminServer) -> AsyncIterator[int]:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(partial(server.serve, shutdown_trigger=stop.wait))
        assert host == "127.0.0.1"
        assert port > 0
        yield port
        stop.set()


async def raw_request(port: int, data: bytes) -> Reply:
    """Send ``data`` as it is on a fresh connection and read one HTTP/1.1 response."""
    with trio.fail_after(IO_TIMEOUT_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            return await read_reply(stream, answering_connection())


def answering_connection() -> h11.Connection:
    """An h11 client that has (notionally) sent a GET, ready to parse whatever answers."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    return conn


def head(method: bytes, target: bytes, *lines: bytes, body: bytes | None = None) -> bytes:
    """The bytes of an HTTP/1.1 request: request line, Host, Connection: close, ``lines``
    (each ``b"Name: value"``), Content-Length when ``body`` is given, then the body."""
    fields = [b"Host: 127.0.0.1", b"Connection: close", *lines]
    if body is not None:
        fields.append(b"Content-Length: %d" % len(body))
    return b"%s %s HTTP/1.1\r\n%s\r\n\r\n%s" % (
        method,
        target,
        b"\r\n".join(fields),
        body or b"",
    )


async def assert_serving(port: int) -> None:
    """The server still answers a fresh client."""
    health = await request(port, "GET", "/health")
    assert health.status == 200
