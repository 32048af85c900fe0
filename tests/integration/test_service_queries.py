"""QueryAggregates end to end: the real service process (embedded nats-server, the index
file under its storage path), grpclib's and grpcio's clients, /health and /metrics, and a
deleted index file rebuilt from the stream with identical answers."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aggregate.gateway.v1 import query_pb2 as qpb
from tests.integration.grpc_harness import CLIENT_KINDS, TYPE, command, open_client
from tests.integration.service_harness import ServiceProcess, running_service

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
TOKEN = "s3cret-admin-token"
ACME = {"x-tenant-id": "acme"}
GLOBEX = {"x-tenant-id": "globex"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = {
        "AGGREGATE_ADMIN_TOKEN": TOKEN,
        "AGGREGATE_LOG_LEVEL": "info",
        "AGGREGATE_SHARD_ID": "shard-a",
    }
    with running_service(tmp_path_factory.mktemp("svc"), env=env) as svc:
        yield svc


async def submit(client: Any, payload: dict[str, Any], tenant: dict[str, str], **kw: Any) -> Any:
    reply = await client.submit(command(payload, **kw), tenant)
    assert reply.status == "OK", reply
    return reply.response


async def query_all(
    client: Any, tenant: dict[str, str], *, min_position: int = 0, page_size: int = 2
) -> tuple[list[tuple[str, int, int, dict[str, Any]]], int]:
    """Every page of the tenant's bank accounts, following the tokens."""
    views: list[tuple[str, int, int, dict[str, Any]]] = []
    token = ""
    while True:
        reply = await client.query(
            qpb.QueryAggregatesRequest(
                aggregate_type=TYPE,
                page_size=page_size,
                page_token=token,
                min_position=min_position,
            ),
            tenant,
        )
        assert reply.status == "OK", reply
        for view in reply.response.aggregates:
            assert view.tenant_id == tenant["x-tenant-id"]
            assert view.aggregate_type == TYPE
            views.append(
                (view.aggregate_id, view.version, view.position, json.loads(view.state_json))
            )
        token = reply.response.next_page_token
        if not token:
            return views, reply.response.position


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_a_query_after_a_command_sees_it(service: ServiceProcess, kind: str) -> None:
    """Read-your-writes: each command's position as min_position, every time."""
    with open_client(kind, service.grpc) as client:
        opened = await submit(client, {"type": "OpenAccount", "owner": kind}, GLOBEX)
        for amount in range(1, 6):
            done = await submit(
                client,
                {"type": "Deposit", "amount": amount},
                GLOBEX,
                aggregate_id=opened.aggregate_id,
            )
            views, position = await query_all(client, GLOBEX, min_position=done.position)
            mine = [v for v in views if v[0] == opened.aggregate_id]
            assert position >= done.position
            assert mine == [
                (
                    opened.aggregate_id,
                    done.version,
                    done.position,
                    {"owner": kind, "balance": sum(range(1, amount + 1))},
                )
            ]


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_queries_are_tenant_scoped_and_tokens_do_not_cross(
    service: ServiceProcess, kind: str
) -> None:
    with open_client(kind, service.grpc) as client:
        last = None
        for owner in ("a", "b", "c"):
            last = await submit(
                client, {"type": "OpenAccount", "owner": owner}, {"x-tenant-id": f"iso-{kind}"}
            )
        other = await submit(
            client, {"type": "OpenAccount", "owner": "z"}, {"x-tenant-id": f"iso2-{kind}"}
        )
        mine, _ = await query_all(
            client, {"x-tenant-id": f"iso-{kind}"}, min_position=other.position
        )
        theirs, _ = await query_all(
            client, {"x-tenant-id": f"iso2-{kind}"}, min_position=other.position
        )
        first = await client.query(
            qpb.QueryAggregatesRequest(aggregate_type=TYPE, page_size=1),
            {"x-tenant-id": f"iso-{kind}"},
        )
        foreign = await client.query(
            qpb.QueryAggregatesRequest(
                aggregate_type=TYPE, page_size=1, page_token=first.response.next_page_token
            ),
            {"x-tenant-id": f"iso2-{kind}"},
        )
        unknown_type = await client.query(
            qpb.QueryAggregatesRequest(aggregate_type="nope"), {"x-tenant-id": f"iso-{kind}"}
        )
        filtered = await client.query(
            qpb.QueryAggregatesRequest(aggregate_type=TYPE, page_size=-1),
            {"x-tenant-id": f"iso-{kind}"},
        )
        missing_tenant = await client.query(qpb.QueryAggregatesRequest(aggregate_type=TYPE), {})
    assert last is not None
    assert sorted(v[3]["owner"] for v in mine) == ["a", "b", "c"]
    assert [v[3]["owner"] for v in theirs] == ["z"]
    assert (foreign.status, foreign.message) == (
        "INVALID_ARGUMENT",
        "page token does not belong to this query",
    )
    assert unknown_type.status == "INVALID_ARGUMENT"
    assert filtered.status == "INVALID_ARGUMENT"
    assert missing_tenant.status == "INVALID_ARGUMENT"


async def test_min_position_not_reached_is_deadline_exceeded(service: ServiceProcess) -> None:
    with open_client("grpclib", service.grpc) as client:
        done = await submit(client, {"type": "OpenAccount", "owner": "x"}, ACME)
        reply = await client.query(
            qpb.QueryAggregatesRequest(aggregate_type=TYPE, min_position=done.position + 1000),
            ACME,
            grpc_timeout=0.5,
        )
    assert reply.status == "DEADLINE_EXCEEDED"


async def test_a_tenant_placed_elsewhere_is_unavailable_naming_the_owner(
    service: ServiceProcess,
) -> None:
    status, _ = service.http_call(
        "POST",
        "/admin/reload",
        {"placement": {"moved-away": "shard-b", "acme": "shard-a"}},
        token=TOKEN,
    )
    assert status == 200
    try:
        with open_client("grpcio", service.grpc) as client:
            reply = await client.query(
                qpb.QueryAggregatesRequest(aggregate_type=TYPE), {"x-tenant-id": "moved-away"}
            )
            here = await client.query(qpb.QueryAggregatesRequest(aggregate_type=TYPE), ACME)
    finally:
        service.http_call("POST", "/admin/reload", {"placement": {}}, token=TOKEN)
    assert reply.status == "UNAVAILABLE"
    assert "shard-b" in (reply.message or "")
    assert here.status == "OK"  # replayed after the placement change, then answered


def test_health_and_metrics_show_the_index(service: ServiceProcess) -> None:
    status, health = service.http_call("GET", "/health")
    assert status == 200
    index = health["index"]
    assert index["replayed"] is True
    assert index["position"] >= 0
    assert {"lag_positions", "lag_seconds", "replaying_tenants", "replayed_messages"} <= set(index)
    status, text = service.http_call("GET", "/metrics")
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"aggregate_index_position", "aggregate_index_lag_positions"} <= names


def histogram_count(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return sum(s.value for s in family.samples if s.name == name + "_count")
    raise AssertionError(f"{name} is not on /metrics")


async def test_the_index_times_each_change_until_it_is_visible(service: ServiceProcess) -> None:
    """aggregate_index_visible_lag_seconds counts every change of a current tenant once its
    batch is visible: by the time a query with the last command's position answers, all
    three are counted. (With a shard id a tenant is current once a query has replayed it.)"""
    initech = {"x-tenant-id": "initech"}
    with open_client("grpclib", service.grpc) as client:
        await query_all(client, initech)
        _, before = service.http_call("GET", "/metrics")
        opened = await submit(client, {"type": "OpenAccount", "owner": "bob"}, initech)
        for amount in (1, 2):
            done = await submit(
                client,
                {"type": "Deposit", "amount": amount},
                initech,
                aggregate_id=opened.aggregate_id,
            )
        await query_all(client, initech, min_position=done.position)
    _, after = service.http_call("GET", "/metrics")
    lag = "aggregate_index_visible_lag_seconds"
    assert histogram_count(after, lag) >= histogram_count(before, lag) + 3
    batches = "aggregate_index_batch_changes"
    assert histogram_count(after, batches) > histogram_count(before, batches)
    writes = "aggregate_index_write_seconds"
    assert histogram_count(after, writes) > histogram_count(before, writes)


async def test_a_deleted_index_is_rebuilt_with_identical_answers(tmp_path: Path) -> None:
    env = {"AGGREGATE_LOG_LEVEL": "info", "AGGREGATE_INDEX_REPLAY_PAGE": "3"}
    with running_service(tmp_path, env=env) as first, open_client("grpclib", first.grpc) as client:
        last = None
        for owner in ("ann", "bob", "cy", "dee"):
            opened = await submit(client, {"type": "OpenAccount", "owner": owner}, ACME)
            last = await submit(
                client,
                {"type": "Deposit", "amount": len(owner)},
                ACME,
                aggregate_id=opened.aggregate_id,
            )
        await submit(client, {"type": "OpenAccount", "owner": "other"}, GLOBEX)
        assert last is not None
        before, _ = await query_all(client, ACME, min_position=last.position)
    index = tmp_path / "index.db"
    assert index.exists()
    for suffix in ("", "-wal", "-shm"):
        index.with_name(index.name + suffix).unlink(missing_ok=True)
    with running_service(tmp_path, env=env) as second:
        with open_client("grpcio", second.grpc) as client:
            after, position = await query_all(client, ACME)
        second.wait_for_log("index replay of every tenant done")
    assert len(before) == 4
    assert after == before
    assert position >= last.position


def test_cli_query_prints_json_lines_and_follows_pages(service: ServiceProcess) -> None:
    import subprocess
    import sys

    addr = f"{service.grpc[0]}:{service.grpc[1]}"
    base = [sys.executable, "-m", "aggregate.cli"]
    tenant = ("-T", TYPE, "--tenant", "cli-q", "--addr", addr)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, timeout=60, check=False
        )

    positions = []
    for owner in ("p", "q", "r"):
        opened = cli("submit", *tenant, "OpenAccount", f"owner={owner}")
        assert opened.returncode == 0, opened.stderr
        positions.append(json.loads(opened.stdout)["position"])
    last = str(max(positions))
    one_page = cli("query", *tenant, "", "--page-size", "2", "--min-position", last)
    every = cli("query", *tenant, "--page-size", "2", "--all", "--min-position", last)
    filtered = cli("query", *tenant, 'state.owner = "q"', "--min-position", last)
    refused = cli("query", *tenant, "state.balance >")
    assert one_page.returncode == 0, one_page.stderr
    assert len(one_page.stdout.splitlines()) == 2
    assert "more: --page-token " in one_page.stderr
    token = one_page.stderr.split("more: --page-token ", 1)[1].split()[0]
    rest = cli("query", *tenant, "--page-size", "2", "--page-token", token)
    views = [json.loads(line) for line in every.stdout.splitlines()]
    assert sorted(v["state"]["owner"] for v in views) == ["p", "q", "r"]
    assert sorted(v["position"] for v in views) == sorted(positions)
    assert [json.loads(x) for x in one_page.stdout.splitlines() + rest.stdout.splitlines()] == views
    assert "more:" not in every.stderr
    assert [json.loads(line)["state"]["owner"] for line in filtered.stdout.splitlines()] == ["q"]
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT" in refused.stderr
    assert "column" in refused.stderr  # the filter's error names where it is
