"""The admin views on the real service process: per-tenant counts and last activity move
with gRPC traffic, a tenant moved to another shard shows ``hosted: false`` with its owner,
and ``/health`` ``storage`` turns false while the SQLite files cannot be written.

Making a file unwritable for root (the tests may run as root): ``chattr +i`` (immutable)
on the database and its WAL; for other users ``chmod`` does. The test is skipped where
neither works (a filesystem without the immutable flag, as root).
"""

from __future__ import annotations

import calendar
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.grpc_harness import command, open_client
from tests.integration.service_harness import ServiceProcess, running_service

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
TOKEN = "views-admin-token-0123456789"
WAIT_S = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = {
        "AGGREGATE_ADMIN_TOKEN": TOKEN,
        "AGGREGATE_LOG_LEVEL": "info",
        "AGGREGATE_SHARD_ID": "shard-a",
        "AGGREGATE_SNAPSHOT_THRESHOLD": "2",
        "AGGREGATE_STORAGE_CHECK_INTERVAL_MS": "100",
    }
    with running_service(tmp_path_factory.mktemp("views"), env=env) as svc:
        yield svc


def get(service: ServiceProcess, path: str) -> tuple[int, Any, dict[str, str]]:
    """GET with the admin token: status, JSON body, response headers (lower-case)."""
    url = f"http://{service.http[0]}:{service.http[1]}{path}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body, status, headers = response.read(), response.status, response.headers
    except urllib.error.HTTPError as exc:
        body, status, headers = exc.read(), exc.code, exc.headers
    return status, json.loads(body), {k.lower(): v for k, v in headers.items()}


def eventually(probe: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
    """Ask ``probe`` until ``done`` holds of its answer (at most ``WAIT_S``)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        answer = probe()
        if done(answer):
            return answer
        if time.monotonic() > deadline:
            raise TimeoutError(f"still {answer!r}")
        time.sleep(0.05)


def epoch(rfc3339: str) -> float:
    whole, millis = rfc3339.removesuffix("Z").split(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(millis) / 1000


async def submit(client: Any, tenant: str, payload: dict[str, Any], aggregate_id: str = "") -> Any:
    return await client.submit(command(payload, aggregate_id=aggregate_id), {"x-tenant-id": tenant})


async def test_counts_and_last_activity_move_with_traffic_per_tenant(
    service: ServiceProcess,
) -> None:
    status, before, _ = get(service, "/admin/tenant/acme/status")
    assert status == 200
    assert before["commands_total"] == 0
    assert before["last_activity"] is None
    assert before["aggregates_cached"] == 0

    started = time.time()
    with open_client("grpclib", service.grpc) as client:
        opened = await submit(client, "acme", {"type": "OpenAccount", "owner": "ann"})
        assert opened.status == "OK"
        agg = str(opened.response.aggregate_id)
        for _ in range(2):
            deposit = await submit(client, "acme", {"type": "Deposit", "amount": 5}, agg)
            assert deposit.status == "OK"
        refused = await submit(client, "acme", {"type": "Withdraw", "amount": 1000}, agg)
        assert refused.status == "FAILED_PRECONDITION"
        assert (await submit(client, "globex", {"type": "OpenAccount", "owner": "bo"})).status == (
            "OK"
        )
    ended = time.time()

    _, tenants, _ = get(service, "/admin/tenants")
    views = {view["tenant_id"]: view for view in tenants}
    acme, globex = views["acme"], views["globex"]
    assert (acme["commands_total"], acme["aggregates_cached"]) == (4, 1)
    assert (globex["commands_total"], globex["aggregates_cached"]) == (1, 1)
    for view in (acme, globex):
        assert view["hosted"] is True
        assert started - 0.001 <= epoch(view["last_activity"]) <= ended + 0.001
    assert epoch(acme["last_activity"]) <= epoch(globex["last_activity"])

    # acme's aggregate has 3 events (threshold 2): the snapshotter writes it off the path.
    acme_now = eventually(
        lambda: get(service, "/admin/tenant/acme/status")[1],
        lambda view: view["aggregates_snapshotted"] == 1,
    )
    assert acme_now["commands_total"] == 4
    assert get(service, "/admin/tenant/globex/status")[1]["aggregates_snapshotted"] == 0
    _, health, _ = get(service, "/health")
    assert health["active_aggregates"] >= 2

    # Paged: one tenant a page, the next page linked.
    _, first, headers = get(service, "/admin/tenants?limit=1")
    assert [view["tenant_id"] for view in first] == ["acme"]
    assert headers["link"] == '</admin/tenants?after=acme&limit=1>; rel="next"'
    _, second, _ = get(service, "/admin/tenants?after=acme&limit=1")
    assert [view["tenant_id"] for view in second] == ["globex"]
    status, refusal, _ = get(service, "/admin/tenants?limit=100000")
    assert status == 400
    assert "limit must be a whole number from 1 to 1000" in refusal["error"]

    # globex moves to another shard: hosted false with its owner, its history kept.
    placement = {"placement": {"acme": "shard-a", "globex": "shard-b"}}
    status, _ = service.http_call("POST", "/admin/reload", placement, token=TOKEN)
    assert status == 200
    _, moved, _ = get(service, "/admin/tenant/globex/status")
    assert (moved["hosted"], moved["accepting"], moved["owner"]) == (False, False, "shard-b")
    assert (moved["commands_total"], moved["aggregates_cached"]) == (1, 0)
    with open_client("grpclib", service.grpc) as client:
        elsewhere = await submit(client, "globex", {"type": "OpenAccount", "owner": "cy"})
        assert elsewhere.status == "UNAVAILABLE"
        again = await submit(client, "acme", {"type": "Deposit", "amount": 1}, agg)
        assert again.status == "OK"
    assert get(service, "/admin/tenant/globex/status")[1]["commands_total"] == 1  # refused
    _, after_move, _ = get(service, "/admin/tenants")
    assert [view["tenant_id"] for view in after_move] == ["acme"]
    assert after_move[0]["commands_total"] == 5


def _set_unwritable(paths: list[Path], unwritable: bool) -> bool:
    """Make ``paths`` unwritable (or writable again); False when this cannot be done."""
    if os.geteuid() != 0:
        for path in paths:
            path.chmod(0o444 if unwritable else 0o644)
        return True
    chattr = shutil.which("chattr")
    if chattr is None:
        return False
    flag = "+i" if unwritable else "-i"
    done = subprocess.run([chattr, flag, *map(str, paths)], capture_output=True, check=False)
    return done.returncode == 0


def test_storage_turns_false_while_the_database_is_unwritable_and_back(
    service: ServiceProcess,
) -> None:
    _, health, _ = get(service, "/health")
    storage = health["storage"]
    assert (storage["reachable"], storage["writable"], storage["last_error"]) == (True, True, None)
    assert health["status"] == "ok"
    assert isinstance(health["snapshot_lag"], int)
    assert health["snapshot_lag_seconds"] >= 0

    database = service.storage / "snapshots.db"
    files = [database, database.with_name("snapshots.db-wal")]
    assert all(path.exists() for path in files)
    if not _set_unwritable(files, True):
        pytest.skip("cannot make a file unwritable here (no chattr +i for root)")
    try:
        service.wait_for_log("snapshot database check failed")
        _, failing, _ = get(service, "/health")
    finally:
        assert _set_unwritable(files, False)
    storage = failing["storage"]
    assert (storage["reachable"], storage["writable"]) == (True, False)
    # SQLite's own message: which one depends on the filesystem and on whether the WAL was
    # open when its mode changed (CI's runner answers with the second).
    assert storage["last_error"] in {
        "cannot write: attempt to write a readonly database",
        "cannot write: disk I/O error",
    }
    assert str(service.storage) not in json.dumps(failing)
    assert failing["status"] == "degraded"
    assert failing["ready"] is True  # /ready stays the probe: snapshots are an optimisation

    service.wait_for_log("snapshot database writable again")
    _, healed, _ = get(service, "/health")
    assert (healed["storage"]["writable"], healed["status"]) == (True, "ok")
    assert healed["storage"]["last_error"] == storage["last_error"]
    assert healed["storage"]["last_error_at"] == storage["last_error_at"]
