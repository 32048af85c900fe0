"""End to end: the real service process (embedded nats-server, SQLite, gRPC, admin HTTP),
called through grpclib's client and grpcio's (an independent HTTP/2 implementation)."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aggregate.domain.ids import uuid7
from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.grpc_harness import CLIENT_KINDS, TYPE, command, open_client
from tests.integration.service_harness import ServiceProcess, running_service

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
TOKEN = "s3cret-admin-token"
ACME = {"x-tenant-id": "acme"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = {
        "AGGREGATE_ADMIN_TOKEN": TOKEN,
        "AGGREGATE_MAX_PAYLOAD_BYTES": "4096",
        "AGGREGATE_LOG_LEVEL": "info",
        "AGGREGATE_SNAPSHOT_THRESHOLD": "3",
        "AGGREGATE_HTTP_MAX_BODY_BYTES": "2048",
    }
    with running_service(tmp_path_factory.mktemp("svc"), env=env) as svc:
        yield svc


async def open_account(client: Any, owner: str = "ann") -> str:
    reply = await client.submit(command({"type": "OpenAccount", "owner": owner}), ACME)
    assert reply.status == "OK", reply
    return str(reply.response.aggregate_id)


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_command_outcomes_and_status_mapping(service: ServiceProcess, kind: str) -> None:
    with open_client(kind, service.grpc) as client:
        agg = await open_account(client)
        deposit = command(
            {"type": "Deposit", "amount": 70}, aggregate_id=agg, command_id=str(uuid7())
        )
        first = await client.submit(deposit, {**ACME, "x-correlation-id": "corr-42"})
        assert first.status == "OK"
        assert first.response.version == 2
        assert not first.response.duplicate
        assert first.initial_metadata.get("x-correlation-id") == "corr-42"
        again = await client.submit(deposit, ACME)
        assert again.status == "OK"
        assert again.response.duplicate
        assert again.response.version == 2
        assert [e.event_id for e in again.response.events] == [
            e.event_id for e in first.response.events
        ]

        rejected = await client.submit(
            command({"type": "Withdraw", "amount": 500}, aggregate_id=agg), ACME
        )
        assert (rejected.status, "insufficient funds" in (rejected.message or "")) == (
            "FAILED_PRECONDITION",
            True,
        )
        stale = await client.submit(
            command({"type": "Deposit", "amount": 1}, aggregate_id=agg, expected_version=1), ACME
        )
        assert stale.status == "ABORTED"

        cases = {
            "bad tenant": (command({"type": "OpenAccount", "owner": "x"}), {"x-tenant-id": "a.b"}),
            "no tenant": (command({"type": "OpenAccount", "owner": "x"}), {}),
            "bad json": (command("{not json"), ACME),
            "unknown type": (command({"type": "OpenAccount"}, aggregate_type="nope"), ACME),
            "bad aggregate id": (command({"type": "Deposit"}, aggregate_id="42"), ACME),
        }
        for name, (request, metadata) in cases.items():
            reply = await client.submit(request, metadata)
            assert reply.status == "INVALID_ARGUMENT", (name, reply)
            assert reply.message, name
        big = await client.submit(
            command({"type": "Deposit", "amount": 1, "memo": "x" * 5000}, aggregate_id=agg), ACME
        )
        assert big.status == "RESOURCE_EXHAUSTED"

        view = await client.get(
            pb.GetAggregateRequest(aggregate_type="bank-account", aggregate_id=agg), ACME
        )
        assert view.status == "OK"
        assert (view.response.version, json.loads(view.response.state_json)) == (
            2,
            {"owner": "ann", "balance": 70},
        )
        other_tenant = await client.get(
            pb.GetAggregateRequest(aggregate_type="bank-account", aggregate_id=agg),
            {"x-tenant-id": "globex"},
        )
        assert other_tenant.status == "NOT_FOUND"


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_streamed_commands_answer_in_order(service: ServiceProcess, kind: str) -> None:
    with open_client(kind, service.grpc) as client:
        agg = await open_account(client)
        requests = [
            command({"type": "Deposit", "amount": 5}, aggregate_id=agg),
            command({"type": "Withdraw", "amount": 100}, aggregate_id=agg),
            command("not json", aggregate_id=agg),
            command({"type": "Deposit", "amount": 6}, aggregate_id=agg),
        ]
        reply = await client.submit_many(requests, ACME)
    assert reply.status == "OK"
    kinds = [r.WhichOneof("result") for r in reply.results]
    assert kinds == ["response", "error", "error", "response"]
    assert [reply.results[1].error.code, reply.results[2].error.code] == [
        "FAILED_PRECONDITION",
        "INVALID_ARGUMENT",
    ]
    assert [reply.results[0].response.version, reply.results[3].response.version] == [2, 3]


async def test_drained_tenant_is_unavailable_and_a_reload_reopens_it(
    service: ServiceProcess,
) -> None:
    tenant = {"x-tenant-id": "drained-co"}
    with open_client("grpcio", service.grpc) as client:
        opened = await client.submit(command({"type": "OpenAccount", "owner": "d"}), tenant)
        agg = opened.response.aggregate_id
        deposit = command({"type": "Deposit", "amount": 1}, aggregate_id=agg)
        status, body = service.http_call(
            "POST", "/admin/tenant/drained-co/drain", {"timeout_ms": 5000}, token=TOKEN
        )
        assert (status, body["drained"]) == (200, True)
        refused = await client.submit(deposit, tenant)
        assert refused.status == "UNAVAILABLE"
        status, view = service.http_call("GET", "/admin/tenant/drained-co/status", token=TOKEN)
        assert (status, view["accepting"], view["draining"]) == (200, False, True)
        assert service.http_call("GET", "/admin/tenant/drained-co/ready", token=TOKEN) == (
            503,
            False,
        )
        other = await client.submit(
            command({"type": "OpenAccount", "owner": "g"}), {"x-tenant-id": "globex"}
        )
        assert other.status == "OK"  # only the drained tenant is refused
        status, change = service.http_call(
            "POST",
            "/admin/reload",
            {"hosted_tenants": ["drained-co", "acme", "globex"]},
            token=TOKEN,
        )
        assert (status, "drained-co" in change["arrived"]) == (200, True)
        again = await client.submit(deposit, tenant)
        assert again.status == "OK"
        status, _ = service.http_call(
            "POST", "/admin/reload", {"hosted_tenants": None}, token=TOKEN
        )
        assert status == 200


def test_admin_requires_the_token_and_serves_health_ready_metrics(service: ServiceProcess) -> None:
    assert service.http_call("GET", "/admin/tenants")[0] == 401
    assert service.http_call("GET", "/admin/tenants", token="wrong")[0] == 401
    status, tenants = service.http_call("GET", "/admin/tenants", token=TOKEN)
    assert status == 200
    assert isinstance(tenants, list)
    assert service.http_call("GET", "/ready") == (200, True)
    status, health = service.http_call("GET", "/health")
    assert (status, health["status"], health["nats_connected"]) == (200, "ok", True)
    status, malformed = service.http_call("POST", "/admin/drain", {"tenant": "x"}, token=TOKEN)
    assert status == 400
    assert malformed["error"]


def test_admin_http_bounds_and_checks_requests_by_its_settings(service: ServiceProcess) -> None:
    big = {"hosted_tenants": [f"tenant-{i:04}" for i in range(200)]}  # over 2048 bytes
    status, refused = service.http_call("POST", "/admin/reload", big, token=TOKEN)
    assert (status, refused["error"]) == (413, "request body is larger than 2048 bytes")
    status, refused = service.http_call("POST", "/admin/tenant/acme%2Fdrain", token=TOKEN)
    assert status == 400
    assert "encoded '/' (%2F)" in refused["error"]
    status, view = service.http_call("GET", "/admin/tenant/acme/status", token=TOKEN)
    assert (status, view["draining"]) == (200, False)


def test_startup_objects_are_frozen_out_of_the_cyclic_gc(service: ServiceProcess) -> None:
    # Full collections over everything a started service holds paused commands 30-120 ms.
    line = service.wait_for_log("startup objects out of the cyclic GC")
    frozen = int(str(line["message"]).split()[1])
    assert frozen > 50_000


def test_the_command_path_runs_on_the_standard_loop_by_default(service: ServiceProcess) -> None:
    line = service.wait_for_log("event loop")
    assert line["message"] == "aggregate-island runs on the asyncio event loop"


async def test_the_command_path_serves_on_uvloop_when_asked(tmp_path: Path) -> None:
    with running_service(tmp_path / "uv", env={"AGGREGATE_EVENT_LOOP": "uvloop"}) as service:
        line = service.wait_for_log("event loop")
        assert line["message"] == "aggregate-island runs on the uvloop event loop"
        with open_client("grpcio", service.grpc) as client:
            opened = await client.submit(
                command({"type": "OpenAccount", "owner": "uv"}), {"x-tenant-id": "uv"}
            )
            assert opened.status == "OK"
            got = await client.get(
                pb.GetAggregateRequest(
                    aggregate_type=TYPE, aggregate_id=str(opened.response.aggregate_id)
                ),
                {"x-tenant-id": "uv"},
            )
        assert (got.status, got.response.version) == ("OK", 1)


async def test_metrics_count_the_traffic(service: ServiceProcess) -> None:
    with open_client("grpclib", service.grpc) as client:
        agg = await open_account(client, "metrics")
        for _ in range(3):
            await client.submit(command({"type": "Deposit", "amount": 1}, aggregate_id=agg), ACME)
        await client.submit(command({"type": "Withdraw", "amount": 99}, aggregate_id=agg), ACME)
    status, text = service.http_call("GET", "/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    ok = value(
        "aggregate_commands_total", aggregate_type="bank-account", tenant_id="acme", outcome="ok"
    )
    refused = value(
        "aggregate_commands_total",
        aggregate_type="bank-account",
        tenant_id="acme",
        outcome="failed_precondition",
    )
    assert ok >= 4
    assert refused >= 1
    assert value("aggregate_ready") == 1.0


def test_cli_submit_get_events_and_exit_codes(service: ServiceProcess) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aggregate.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    addr = f"{service.grpc[0]}:{service.grpc[1]}"
    acme = ("-T", "bank-account", "--tenant", "acme")

    def client(verb: str, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(verb, *acme, "--addr", addr, *args)

    opened = client("submit", "OpenAccount", "owner=cli")
    assert opened.returncode == 0, opened.stderr
    agg = json.loads(opened.stdout)["aggregate_id"]
    deposit = client("submit", "--id", agg, "Deposit", "amount=12")
    assert json.loads(deposit.stdout)["version"] == 2
    refused = client("submit", "--id", agg, "Withdraw", "amount=13")
    assert refused.returncode == 1
    assert "FAILED_PRECONDITION" in refused.stderr
    got = client("get", "--id", agg)
    assert json.loads(got.stdout)["state"] == {"owner": "cli", "balance": 12}
    events = cli("events", *acme, "--storage", str(service.storage), "--id", agg)
    assert events.returncode == 0, events.stderr
    assert [e["event_type"] for e in json.loads(events.stdout)] == [
        "AccountOpened",
        "MoneyDeposited",
    ]
    # An aggregate with no events is NOT_FOUND (exit code 1) to `events` as to `get`.
    nobody = str(uuid7())
    for verb in (
        client("get", "--id", nobody),
        cli("events", *acme, "--storage", str(service.storage), "--id", nobody),
    ):
        assert verb.returncode == 1, verb.stderr
        assert ": NOT_FOUND: " in verb.stderr
        assert verb.stdout == ""
    unreachable = cli("get", *acme, "--addr", "127.0.0.1:1", "--id", agg, "--timeout", "2")
    assert unreachable.returncode == 3
    bad = cli("get", "-T", "bank account", "--id", str(uuid.uuid4()))
    assert bad.returncode == 2
