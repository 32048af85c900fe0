"""The admin HTTP server (DESIGN §9.2): real hypercorn on loopback, a real HTTP/1.1 client.

The backend is a recording fake (``admin_harness``); what it answers is the service's
business (the gate and placement tests cover that). Here: routes, shapes, status codes,
auth, context headers, error mapping, and the server's lifecycle. Hostile input:
``test_admin_http_hostile``.
"""

from __future__ import annotations

import io
import json
import logging
import re
from functools import partial

import h11
import pytest
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from aggregate.adapters.admin_http import AdminServer, admin_access_denial, is_loopback
from aggregate.adapters.logging import configure_logging, reset_logging
from aggregate.adapters.metrics import Metrics
from aggregate.application.admin import TenantPage
from aggregate.domain.errors import (
    ConfigError,
    InvalidArgumentError,
    TenantUnavailableError,
)
from tests.integration.admin_harness import (
    AUTH,
    IO_TIMEOUT_S,
    TOKEN,
    FakeBackend,
    Reply,
    make_server,
    read_reply,
    request,
    running,
    status_view,
)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


# --- endpoints ------------------------------------------------------------------------


@pytest.mark.trio
async def test_health_and_ready(backend: FakeBackend) -> None:
    async with running(make_server(backend)) as port:
        health = await request(port, "GET", "/health")
        assert health.status == 200
        assert health.json() == backend.health()
        ready = await request(port, "GET", "/ready")
        assert (ready.status, ready.json()) == (200, True)
        backend.is_ready = False
        not_ready = await request(port, "GET", "/ready")
        assert (not_ready.status, not_ready.json()) == (503, False)
        health = await request(port, "GET", "/health")
        assert health.status == 200
        assert health.json()["status"] == "starting"  # type: ignore[index]


@pytest.mark.trio
async def test_metrics_endpoint_parses(backend: FakeBackend) -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.command_started("acme", "account")
    metrics.command_finished("acme", "account", "ok", 0.002)
    async with running(make_server(backend, metrics=metrics)) as port:
        reply = await request(port, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
    (sample,) = families["aggregate_commands"].samples
    assert sample.labels == {"aggregate_type": "account", "tenant_id": "acme", "outcome": "ok"}
    assert sample.value == 1


@pytest.mark.trio
async def test_tenants_and_tenant_status(backend: FakeBackend) -> None:
    async with running(make_server(backend)) as port:
        listed = await request(port, "GET", "/admin/tenants", headers=AUTH)
        assert listed.status == 200
        assert [t["tenant_id"] for t in listed.json()] == ["acme", "globex"]  # type: ignore[attr-defined]
        status = await request(port, "GET", "/admin/tenant/acme/status", headers=AUTH)
        assert status.status == 200
        assert status.json() == status_view("acme")
    assert backend.calls == [("tenants", TenantPage()), ("tenant_status", "acme")]


@pytest.mark.trio
async def test_tenant_ready_needs_node_ready_and_tenant_accepting(backend: FakeBackend) -> None:
    backend.statuses["closed"] = status_view("closed", accepting=False)
    async with running(make_server(backend)) as port:
        ok = await request(port, "GET", "/admin/tenant/acme/ready", headers=AUTH)
        assert (ok.status, ok.json()) == (200, True)
        closed = await request(port, "GET", "/admin/tenant/closed/ready", headers=AUTH)
        assert (closed.status, closed.json()) == (503, False)
        backend.is_ready = False
        node_down = await request(port, "GET", "/admin/tenant/acme/ready", headers=AUTH)
        assert (node_down.status, node_down.json()) == (503, False)


@pytest.mark.trio
async def test_drains(backend: FakeBackend) -> None:
    async with running(make_server(backend)) as port:
        body = json.dumps({"tenant_id": "acme", "timeout_ms": 250}).encode()
        drained = await request(port, "POST", "/admin/drain", headers=AUTH, body=body)
        assert drained.status == 200
        assert drained.json() == {
            "tenant_id": "acme",
            "drained": True,
            "in_flight": 0,
            "reopened": False,
            "owner": None,
        }
        backend.still_in_flight = 2
        by_path = await request(port, "POST", "/admin/tenant/globex/drain", headers=AUTH)
        assert by_path.status == 202  # in force, commands still running
        assert by_path.json()["in_flight"] == 2  # type: ignore[index]
        body = json.dumps({"timeout_ms": 0}).encode()
        await request(port, "POST", "/admin/tenant/acme/drain", headers=AUTH, body=body)
    assert backend.calls == [
        ("drain_tenant", "acme", 0.25),
        ("drain_tenant", "globex", 10.0),  # the configured default
        ("drain_tenant", "acme", 0.0),
    ]


@pytest.mark.trio
async def test_reload(backend: FakeBackend) -> None:
    async with running(make_server(backend)) as port:
        body = json.dumps({"hosted_tenants": ["globex", "acme", "acme"]}).encode()
        reply = await request(port, "POST", "/admin/reload", headers=AUTH, body=body)
        assert reply.status == 200
        assert reply.json() == {"arrived": ["acme", "globex"], "left": []}
        body = json.dumps({"placement": {"acme": "shard-a", "globex": "shard-b"}}).encode()
        reply = await request(port, "POST", "/admin/reload", headers=AUTH, body=body)
        assert reply.status == 200
    assert backend.calls == [
        ("reload", ["acme", "globex"], None),
        ("reload", None, {"acme": "shard-a", "globex": "shard-b"}),
    ]


@pytest.mark.trio
async def test_log_levels_change_at_runtime(backend: FakeBackend) -> None:
    out = io.StringIO()
    configure_logging("info", stream=out)
    ours = logging.getLogger("aggregate.test_admin_http")
    library = logging.getLogger("hpack.hpack")

    async def post(body: dict[str, str], headers: list[tuple[str, str]] = AUTH) -> Reply:
        data = json.dumps(body).encode()
        return await request(port, "POST", "/admin/log-level", headers=headers, body=data)

    try:
        async with running(make_server(backend)) as port:
            ours.debug("ours before")
            refused = await post({"level": "debug"}, headers=[])
            ours.debug("ours after the refusal")
            louder = await post({"level": "debug"})
            ours.debug("ours after")
            library.debug("library before")
            both = await post({"level": "info", "library_level": "debug"})
            library.debug("library after")
            ours.debug("ours quiet again")
            current = await request(port, "GET", "/admin/log-level", headers=AUTH)
    finally:
        reset_logging()
    assert refused.status == 401
    assert (louder.status, louder.json()) == (200, {"level": "debug", "library_level": "warning"})
    assert (both.status, both.json()) == (200, {"level": "info", "library_level": "debug"})
    assert current.json() == both.json()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    probes = [line["message"] for line in lines if line["logger"] in (ours.name, library.name)]
    assert probes == ["ours after", "library after"]
    changes = [line for line in lines if line["message"].startswith("log levels set")]
    assert [(c["level"], c["correlation_id"] != "") for c in changes] == [("info", True)] * 2


# --- auth ---------------------------------------------------------------------------


@pytest.mark.trio
async def test_admin_needs_the_bearer_token(backend: FakeBackend) -> None:
    async with running(make_server(backend)) as port:
        missing = await request(port, "GET", "/admin/tenants")
        assert missing.status == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization" in missing.json()["error"]  # type: ignore[index]
        wrong = await request(
            port, "GET", "/admin/tenants", headers=[("authorization", "Bearer nope")]
        )
        assert wrong.status == 401
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        basic = await request(
            port, "GET", "/admin/tenants", headers=[("authorization", f"Basic {TOKEN}")]
        )
        assert basic.status == 401
        # Unknown admin paths are refused before routing: no probing without the token.
        assert (await request(port, "GET", "/admin/nothing")).status == 401
        # Write endpoints too, and nothing reached the backend.
        refused = await request(port, "POST", "/admin/drain", body=b'{"tenant_id": "acme"}')
        assert refused.status == 401
        assert backend.calls == []
        right = await request(
            port, "GET", "/admin/tenants", headers=[("Authorization", f"bearer {TOKEN}")]
        )
        assert right.status == 200
        # Health, readiness and metrics stay open.
        assert (await request(port, "GET", "/health")).status == 200
        assert (await request(port, "GET", "/metrics")).status == 200


@pytest.mark.trio
async def test_no_token_answers_loopback_clients(backend: FakeBackend) -> None:
    async with running(make_server(backend, token=None)) as port:
        reply = await request(port, "GET", "/admin/tenants")
    assert reply.status == 200


def scope(client: tuple[str, int] | None, authorization: str | None = None) -> dict[str, object]:
    headers = [(b"authorization", authorization.encode())] if authorization else []
    return {"type": "http", "client": client, "headers": headers}


@pytest.mark.parametrize(
    ("client", "allowed"),
    [
        (("127.0.0.1", 5000), True),
        (("127.3.4.5", 5000), True),
        (("::1", 5000), True),
        (("::ffff:127.0.0.1", 5000), True),
        (("10.0.0.7", 5000), False),
        (("192.168.1.2", 5000), False),
        (("2001:db8::1", 5000), False),
        (("::ffff:10.0.0.7", 5000), False),
        (("localhost", 5000), False),
        (None, False),
    ],
)
def test_without_a_token_only_loopback_is_allowed(
    client: tuple[str, int] | None, allowed: bool
) -> None:
    denial = admin_access_denial(scope(client), None)
    assert (denial is None) == allowed
    if denial is not None:
        assert denial.status == 403
        assert "AGGREGATE_ADMIN_TOKEN" in denial.reason


def test_with_a_token_loopback_is_not_enough() -> None:
    denial = admin_access_denial(scope(("127.0.0.1", 1)), TOKEN)
    assert denial is not None
    assert denial.status == 401
    assert admin_access_denial(scope(("10.0.0.7", 1), f"Bearer {TOKEN}"), TOKEN) is None
    assert admin_access_denial(scope(("10.0.0.7", 1), f"Bearer {TOKEN}x"), TOKEN) is not None
    assert not is_loopback("not-an-ip")


# --- bad requests and errors -------------------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/admin/drain", b"{not json", "not valid JSON"),
        ("/admin/drain", b"", "empty"),
        ("/admin/drain", b"[1, 2]", "must be a JSON object"),
        ("/admin/drain", b'{"timeout_ms": 5}', 'missing field "tenant_id"'),
        ("/admin/drain", b'{"tenant_id": "no spaces"}', "tenant_id"),
        ("/admin/drain", b'{"tenant_id": 7}', "must be a string"),
        ("/admin/drain", b'{"tenant_id": "acme", "timeout_ms": -1}', "non-negative"),
        ("/admin/drain", b'{"tenant_id": "acme", "timeout_ms": 1.5}', "integer"),
        ("/admin/drain", b'{"tenant_id": "acme", "timeout_ms": true}', "integer"),
        ("/admin/drain", b'{"tenant_id": "acme", "timeout_ms": 99999999}', "at most"),
        ("/admin/drain", b'{"tenant_id": "acme", "wait": 1}', "unknown field(s) 'wait'"),
        ("/admin/tenant/acme/drain", b'{"tenant_id": "acme"}', "unknown field"),
        ("/admin/tenant/bad.id/drain", b"", "tenant id"),
        ("/admin/reload", b"{}", "exactly one of"),
        ("/admin/reload", b'{"hosted_tenants": [], "placement": {}}', "exactly one of"),
        ("/admin/reload", b'{"hosted_tenants": "acme"}', "must be a list"),
        ("/admin/reload", b'{"hosted_tenants": ["ok", "not ok"]}', "hosted_tenants[1]"),
        ("/admin/reload", b'{"placement": ["acme"]}', "placement map must be"),
        ("/admin/reload", b'{"placement": {"acme": "bad shard"}}', "shard id"),
        ("/admin/log-level", b"", "empty"),
        ("/admin/log-level", b"{}", 'give "level"'),
        ("/admin/log-level", b'{"level": "loud"}', "level must be one of debug, info"),
        ("/admin/log-level", b'{"level": 10}', "level must be one of"),
        ("/admin/log-level", b'{"level": "debug", "library_level": null}', "library_level"),
        ("/admin/log-level", b'{"lvl": "debug"}', "unknown field(s) 'lvl'"),
    ],
)
async def test_malformed_requests_are_400_with_a_reason(
    backend: FakeBackend, path: str, body: bytes, reason: str
) -> None:
    async with running(make_server(backend)) as port:
        reply = await request(port, "POST", path, headers=AUTH, body=body)
    assert reply.status == 400
    assert reason in reply.json()["error"]  # type: ignore[index]
    assert backend.calls == []


@pytest.mark.trio
async def test_bad_tenant_in_path_and_unknown_routes(backend: FakeBackend) -> None:
    async with running(make_server(backend)) as port:
        bad = await request(port, "GET", "/admin/tenant/bad.id/status", headers=AUTH)
        assert bad.status == 400
        assert "tenant id 'bad.id' is invalid" in bad.json()["error"]  # type: ignore[index]
        missing = await request(port, "GET", "/nowhere")
        assert missing.status == 404
        assert "/nowhere" in missing.json()["error"]  # type: ignore[index]
        wrong_method = await request(port, "GET", "/admin/drain", headers=AUTH)
        assert wrong_method.status == 405
        assert "use" in wrong_method.json()["error"]  # type: ignore[index]
        huge = await request(port, "POST", "/admin/reload", headers=AUTH, body=b" " * 100_000)
        assert huge.status == 413
        assert "larger than" in huge.json()["error"]  # type: ignore[index]
    assert backend.calls == []


@pytest.mark.trio
@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (TenantUnavailableError("tenant acme moved", owner="shard-b"), 503, "tenant acme moved"),
        (InvalidArgumentError("placement names no shard"), 400, "placement names no shard"),
        (RuntimeError("secret internals"), 500, "internal error"),
    ],
)
async def test_backend_errors_map_through_the_status_table(
    backend: FakeBackend, error: Exception, status: int, message: str
) -> None:
    backend.error = error
    async with running(make_server(backend)) as port:
        reply = await request(port, "GET", "/admin/tenant/acme/status", headers=AUTH)
    assert reply.status == status
    body = reply.json()
    assert message in body["error"]  # type: ignore[index]
    assert "secret" not in reply.body.decode()
    if isinstance(error, TenantUnavailableError):
        assert body["owner"] == "shard-b"  # type: ignore[index]


@pytest.mark.trio
async def test_internal_errors_answer_an_error_id_found_in_the_log(backend: FakeBackend) -> None:
    backend.error = RuntimeError("secret internals")
    out = io.StringIO()
    configure_logging("info", stream=out)
    try:
        async with running(make_server(backend)) as port:
            reply = await request(port, "GET", "/admin/tenant/acme/status", headers=AUTH)
    finally:
        reset_logging()
    assert reply.status == 500
    error = str(reply.json()["error"])  # type: ignore[index]
    found = re.fullmatch(
        r"internal error \(error id ([0-9a-f]{16})\); the service log has the details", error
    )
    assert found, error
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    [line] = [line for line in lines if line.get("error_id") == found.group(1)]
    assert "secret internals" in line["exc"]
    assert line["request_id"] == reply.headers["x-request-id"]


# --- context, lifecycle -------------------------------------------------------------------


@pytest.mark.trio
async def test_request_context_is_echoed_and_logged(backend: FakeBackend) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    sent = [*AUTH, ("x-correlation-id", "corr-42"), ("traceparent", traceparent)]
    out = io.StringIO()
    configure_logging("info", stream=out)
    try:
        async with running(make_server(backend)) as port:
            reply = await request(port, "POST", "/admin/tenant/acme/drain", headers=sent)
            plain = await request(port, "GET", "/health")
    finally:
        reset_logging()
    assert reply.headers["x-correlation-id"] == "corr-42"
    assert reply.headers["traceparent"] == traceparent
    assert reply.headers["x-request-id"]
    assert plain.headers["x-correlation-id"]  # generated when absent
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    (drain_line,) = [line for line in lines if line["message"].startswith("admin drain")]
    assert drain_line["correlation_id"] == "corr-42"
    assert drain_line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert drain_line["tenant_id"] == "acme"


@pytest.mark.trio
async def test_shutdown_trigger_ends_serve_with_a_keep_alive_connection_open(
    backend: FakeBackend,
) -> None:
    # A grace far beyond the test's deadline: serve must end because the idle connection
    # is closed at once, not because the grace ran out.
    server = make_server(backend, graceful_timeout_s=10 * IO_TIMEOUT_S)
    stop = trio.Event()
    with trio.fail_after(IO_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(partial(server.serve, shutdown_trigger=stop.wait))
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                conn = h11.Connection(h11.CLIENT)
                get = h11.Request(method="GET", target="/ready", headers=[("host", "x")])
                await stream.send_all(conn.send(get) + conn.send(h11.EndOfMessage()))
                assert (await read_reply(stream, conn)).status == 200
                stop.set()
                # The server closes the idle keep-alive connection instead of waiting it out.
                assert await stream.receive_some() == b""
        with pytest.raises(OSError, match="connect"):
            await trio.open_tcp_stream("127.0.0.1", port)


@pytest.mark.trio
async def test_a_taken_port_is_a_config_error(backend: FakeBackend) -> None:
    first = make_server(backend)
    async with running(first) as port:
        second = AdminServer(
            backend,
            token=None,
            host="127.0.0.1",
            port=port,
            metrics=Metrics(CollectorRegistry()),
        )
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1:\d+.*HTTP_ADDR"):
            await second.serve()
