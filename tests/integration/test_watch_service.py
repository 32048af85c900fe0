"""WatchAggregates end to end: the real service process (embedded nats-server), grpclib's
and grpcio's clients; order, none missing, none twice under concurrent writers, resume after
a disconnect and after a restart, a slow watcher, tenant isolation, shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from tests.integration.grpc_harness import command, open_client
from tests.integration.service_harness import running_service, start_service
from tests.integration.watch_client import (
    SlowWatch,
    WatchResult,
    grpcio_watch,
    open_watch,
    read,
    request,
    watch_n,
)

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.service_harness import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
TYPE = "bank-account"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def tenant(name: str) -> dict[str, str]:
    return {"x-tenant-id": name}


async def submit(client: Any, meta: dict[str, str], payload: dict[str, Any], agg: str = "") -> Any:
    reply = await client.submit(command(payload, aggregate_id=agg), meta)
    assert reply.status == "OK", reply
    return reply.response


async def open_accounts(client: Any, meta: dict[str, str], n: int) -> list[Any]:
    return [await submit(client, meta, {"type": "OpenAccount", "owner": "ann"}) for _ in range(n)]


async def concurrent_deposits(
    client: Any, meta: dict[str, str], accounts: list[str], each: int
) -> list[int]:
    positions: list[int] = []

    async def writer(agg: str) -> None:
        for _ in range(each):
            response = await submit(client, meta, {"type": "Deposit", "amount": 1}, agg)
            positions.append(response.position)

    async with anyio.create_task_group() as tg:
        for agg in accounts:
            tg.start_soon(writer, agg)
    return sorted(positions)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    env = {"AGGREGATE_WATCH_QUEUE_CHANGES": "50", "AGGREGATE_LOG_LEVEL": "info"}
    with running_service(tmp_path_factory.mktemp("watch"), env=env) as svc:
        yield svc


async def test_every_change_in_order_once_under_concurrent_writers(
    service: ServiceProcess,
) -> None:
    meta = tenant("order")
    with anyio.fail_after(60), open_client("grpclib", service.grpc) as client:
        accounts = await open_accounts(client, meta, 4)
        start = accounts[-1].position
        async with open_watch(
            service.grpc, request(TYPE, from_position=start, include_state=True), meta
        ) as stream:
            written = await concurrent_deposits(
                client, meta, [a.aggregate_id for a in accounts], 10
            )
            result = await read(stream, WatchResult(), len(written))
    assert result.positions == written
    assert all(c.aggregate_type == TYPE and c.events for c in result.changes)
    last = {c.aggregate_id: c for c in result.changes}
    assert {json.loads(c.state_json)["balance"] for c in last.values()} == {10}
    assert all(c.version == 11 for c in last.values())


async def test_resume_after_a_disconnect_from_the_last_position_seen(
    service: ServiceProcess,
) -> None:
    meta = tenant("resume")
    with anyio.fail_after(60), open_client("grpclib", service.grpc) as client:
        (account,) = await open_accounts(client, meta, 1)
        agg = account.aggregate_id
        written = [
            (await submit(client, meta, {"type": "Deposit", "amount": 1}, agg)).position
            for _ in range(6)
        ]
        first = await watch_n(service.grpc, request(from_position=account.position), meta, 3)
        assert first.positions == written[:3]
        written += [
            (await submit(client, meta, {"type": "Deposit", "amount": 1}, agg)).position
            for _ in range(2)
        ]
        rest = await grpcio_watch(
            service.grpc, request(from_position=first.positions[-1]), meta, len(written) - 3
        )
    assert rest.positions == written[3:]


async def test_tenants_and_subsets_are_isolated(service: ServiceProcess) -> None:
    acme, globex = tenant("iso-acme"), tenant("iso-globex")
    with anyio.fail_after(60), open_client("grpclib", service.grpc) as client:
        (mark,) = await open_accounts(client, acme, 1)
        await open_accounts(client, acme, 3)
        (theirs,) = await open_accounts(client, globex, 1)
        await submit(client, acme, {"type": "Deposit", "amount": 5}, mark.aggregate_id)
        seen = await watch_n(service.grpc, request(from_position=mark.position), globex, 1)
        one = await watch_n(
            service.grpc,
            request(TYPE, from_position=mark.position, aggregate_id=mark.aggregate_id),
            acme,
            1,
        )
    assert [(c.aggregate_id, c.position) for c in seen.changes] == [
        (theirs.aggregate_id, theirs.position)
    ]
    assert [(c.aggregate_id, c.version) for c in one.changes] == [(mark.aggregate_id, 2)]


async def test_a_slow_watcher_is_ended_and_others_are_not(service: ServiceProcess) -> None:
    meta = tenant("slow")
    with anyio.fail_after(90), open_client("grpclib", service.grpc) as client:
        (account,) = await open_accounts(client, meta, 1)
        agg = account.aggregate_id
        slow = SlowWatch(service.grpc, request(from_position=account.position), meta)
        async with open_watch(service.grpc, request(from_position=account.position), meta) as fast:
            fast_result = WatchResult()
            written = []
            for _ in range(120):  # the queue holds 50 changes, the slow window one
                response = await submit(client, meta, {"type": "Deposit", "amount": 1}, agg)
                written.append(response.position)
                await read(fast, fast_result, len(written))
        slow_result = await anyio.to_thread.run_sync(slow.finish)
    assert fast_result.positions == written
    assert fast_result.status is None
    assert slow_result.status == "RESOURCE_EXHAUSTED", slow_result
    assert "behind" in (slow_result.message or "")
    assert slow_result.positions == written[: len(slow_result.positions)]
    assert len(slow_result.positions) < len(written)
    assert slow_result.resume == (slow_result.positions or [account.position])[-1]


async def test_bad_requests(service: ServiceProcess) -> None:
    with anyio.fail_after(30):
        unknown = await watch_n(service.grpc, request("no-such-type"), tenant("bad"), 1)
        bad_id = await watch_n(service.grpc, request(TYPE, aggregate_id="nope"), tenant("b"), 1)
        no_tenant = await watch_n(service.grpc, request(TYPE), {}, 1)
    assert unknown.status == "INVALID_ARGUMENT"
    assert "no-such-type" in (unknown.message or "")
    assert bad_id.status == "INVALID_ARGUMENT"
    assert no_tenant.status == "INVALID_ARGUMENT"


async def test_resume_after_a_restart_and_shutdown_ends_watches(tmp_path: Path) -> None:
    meta = tenant("restart")
    service = start_service(tmp_path)
    try:
        with anyio.fail_after(120):
            with open_client("grpclib", service.grpc) as client:
                accounts = await open_accounts(client, meta, 3)
                start = accounts[0].position
                async with open_watch(service.grpc, request(from_position=start), meta) as live:
                    ended = await read(live, WatchResult(), 1)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(read, live, ended)  # reads on until the watch ends
                        code = await anyio.to_thread.run_sync(service.stop, signal.SIGTERM)
            assert code == 0
            assert ended.status == "UNAVAILABLE", ended
            assert ended.resume == ended.positions[-1]
            assert ended.positions == [a.position for a in accounts[1 : len(ended.positions) + 1]]
            resume_from = ended.resume
            service = start_service(tmp_path)
            with open_client("grpclib", service.grpc) as client:
                async with open_watch(
                    service.grpc, request(from_position=resume_from, include_state=True), meta
                ) as again:
                    after = await submit(
                        client, meta, {"type": "Deposit", "amount": 7}, accounts[0].aggregate_id
                    )
                    # the openings not yet seen come from the stream, the deposit live
                    expected = [a.position for a in accounts if a.position > resume_from]
                    expected.append(after.position)
                    result = await read(again, WatchResult(), len(expected))
        assert result.positions == expected
        assert json.loads(result.changes[-1].state_json) == {"owner": "ann", "balance": 7}
    finally:
        if service.proc.poll() is None:
            try:  # SIGTERM: the service stops its embedded nats-server (SIGKILL would orphan it)
                service.stop(signal.SIGTERM, timeout=30)
            except subprocess.TimeoutExpired:
                service.stop(signal.SIGKILL)


async def test_the_cli_prints_json_lines_and_says_where_to_resume(
    service: ServiceProcess,
) -> None:
    meta = tenant("cli")
    with anyio.fail_after(60), open_client("grpclib", service.grpc) as client:
        accounts = await open_accounts(client, meta, 3)
    base = [
        sys.executable, "-m", "aggregate.cli", "watch", "-T", TYPE, "--tenant", "cli",
        "--addr", f"{service.grpc[0]}:{service.grpc[1]}",
    ]  # fmt: skip
    done = await anyio.run_process(
        [*base, "--from", str(accounts[0].position), "--count", "2", "--state"], check=False
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [line["position"] for line in lines] == [a.position for a in accounts[1:]]
    assert lines[0]["state"] == {"owner": "ann", "balance": 0}
    assert lines[0]["events"][0]["event_type"] == "AccountOpened"
    refused = await anyio.run_process([*base, "--filter", "state.balance >"], check=False)
    assert refused.returncode == 1
    assert b"INVALID_ARGUMENT" in refused.stderr


async def test_a_tenant_that_moves_away_ends_its_watches_naming_the_owner(
    tmp_path: Path,
) -> None:
    moving, staying = tenant("moving"), tenant("staying")
    with running_service(tmp_path) as service, open_client("grpclib", service.grpc) as client:
        with anyio.fail_after(60):
            (opened,) = await open_accounts(client, moving, 1)
            async with open_watch(
                service.grpc, request(from_position=opened.position), moving
            ) as watch:
                deposit = {"type": "Deposit", "amount": 1}
                deposited = await submit(client, moving, deposit, opened.aggregate_id)
                result = await read(watch, WatchResult(), 1)
                placement = {"placement": {"moving": "shard-b", "staying": "local"}}
                status, body = await anyio.to_thread.run_sync(
                    service.http_call, "POST", "/admin/reload", placement
                )
                assert status == 200, body
                await read(watch, result)
            refused = await watch_n(service.grpc, request(from_position=1), moving, 1)
            (stays,) = await open_accounts(client, staying, 1)
            still = await watch_n(
                service.grpc, request(from_position=stays.position - 1), staying, 1
            )
    assert result.positions == [deposited.position]
    assert result.status == "UNAVAILABLE", result
    assert "shard-b" in (result.message or "")
    assert result.resume == deposited.position
    assert result.trailers.get("x-owner-shard") == "shard-b", result.trailers
    assert refused.status == "UNAVAILABLE"
    assert "shard-b" in (refused.message or "")
    assert still.positions == [stays.position]
