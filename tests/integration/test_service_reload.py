"""Programs over time in the real service process: programs given only by the environment
serve every type; hot reload through the admin API and SIGHUP; ``program-version`` on every
stored message; a refused reload changes nothing; ``?rebuild=true``."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from typing import TYPE_CHECKING, Any

import grpc
import nats
import pytest

from aggregate.config import example_manifest_path
from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.grpc_harness import grpcio_stubs
from tests.integration.service_harness import start_service

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.integration.service_harness import ServiceProcess

pytestmark = pytest.mark.integration

TOKEN = "reload-test-token"
TENANT = (("x-tenant-id", "acme"),)
BANK = example_manifest_path("bank").parent
CAPPED = (
    (BANK / "decide.star")
    .read_text()
    .replace(
        '    if kind == "Deposit":\n',
        '    if kind == "Deposit" and amount > 100:\n'
        '        return reject("deposits above 100 are refused")\n'
        '    if kind == "Deposit":\n',
    )
)
COUNTING_APPLY = (
    (BANK / "apply.star")
    .read_text()
    .replace(
        "def apply(state, event):\n",
        "def apply(state, event):\n    state = dict(state, events = state.get('events', 0) + 1)\n",
    )
)


class Client:
    """Blocking grpcio calls to one service."""

    def __init__(self, service: ServiceProcess) -> None:
        address = f"{service.grpc[0]}:{service.grpc[1]}"
        self.channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
        self.commands = grpcio_stubs().CommandServiceStub(self.channel)

    def submit(self, kind: str, payload: dict[str, Any], aggregate_id: str = "") -> Any:
        request = pb.SubmitCommandRequest(
            aggregate_type=kind, aggregate_id=aggregate_id, payload_json=json.dumps(payload)
        )
        return self.commands.SubmitCommand(request, metadata=TENANT, timeout=60)

    def state(self, kind: str, aggregate_id: str) -> Any:
        request = pb.GetAggregateRequest(aggregate_type=kind, aggregate_id=aggregate_id)
        view = self.commands.GetAggregate(request, metadata=TENANT, timeout=60)
        return json.loads(view.state_json)


def stored_headers(service: ServiceProcess, subject: str) -> dict[str, str]:
    """The headers of the last message stored on ``subject`` (read from the service's
    embedded nats-server)."""
    url = (service.storage / "embedded-nats.url").read_text().strip()

    async def read() -> dict[str, str]:
        nc = await nats.connect(url, connect_timeout=10)
        try:
            message = await nc.jetstream(timeout=10).get_last_msg("AGGREGATE_EVENTS", subject)
            return dict(message.headers or {})
        finally:
            await nc.close()

    return asyncio.run(read())


def subject(reply: Any) -> str:
    return f"tenant.{reply.tenant_id}.aggregate.{reply.aggregate_type}.{reply.aggregate_id}"


# ---- programs given only by the environment ------------------------------------------


def test_environment_programs_serve_every_type_a_request_names(tmp_path: Path) -> None:
    env = {
        "AGGREGATE_DECIDE_PROGRAM_PATH": str(BANK / "decide.star"),
        "AGGREGATE_APPLY_PROGRAM_PATH": str(BANK / "apply.star"),
        "AGGREGATE_PROGRAM_WORKERS": "1",
    }
    service = start_service(tmp_path / "svc", env=env, example=None)
    try:
        client = Client(service)
        for kind in ("Account", "Loan"):
            opened = client.submit(kind, {"type": "OpenAccount", "owner": "ann"})
            assert (opened.aggregate_type, opened.version) == (kind, 1)
            client.submit(kind, {"type": "Deposit", "amount": 5}, opened.aggregate_id)
            assert client.state(kind, opened.aggregate_id) == {"owner": "ann", "balance": 5}
        status, listing = service.http_call("GET", "/admin/programs")
        assert status == 200
        assert [entry["aggregate_type"] for entry in listing] == ["*"]
        client.channel.close()
    finally:
        service.stop(signal.SIGTERM, timeout=30)


def test_aggregate_type_narrows_environment_programs_to_one_type(tmp_path: Path) -> None:
    env = {
        "AGGREGATE_DECIDE_PROGRAM_PATH": str(BANK / "decide.star"),
        "AGGREGATE_APPLY_PROGRAM_PATH": str(BANK / "apply.star"),
        "AGGREGATE_AGGREGATE_TYPE": "Account",
        "AGGREGATE_PROGRAM_ISOLATION": "inline",
    }
    service = start_service(tmp_path / "svc", env=env, example=None)
    try:
        client = Client(service)
        assert client.submit("Account", {"type": "OpenAccount", "owner": "ann"}).version == 1
        with pytest.raises(grpc.RpcError) as refused:
            client.submit("Loan", {"type": "OpenAccount", "owner": "ann"})
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == (
            "aggregate type 'Loan' is not configured; configured types: Account"
        )
        client.channel.close()
    finally:
        service.stop(signal.SIGTERM, timeout=30)


# ---- hot reload ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    directory = tmp_path_factory.mktemp("reload")
    shutil.copy(BANK / "decide.star", directory / "decide.star")
    shutil.copy(BANK / "apply.star", directory / "apply.star")
    (directory / "manifest.yaml").write_text(
        "aggregate_types:\n  bank-account:\n    decide: decide.star\n    apply: apply.star\n"
    )
    env = {
        "AGGREGATE_MANIFEST_PATH": str(directory / "manifest.yaml"),
        "AGGREGATE_PROGRAM_WORKERS": "1",
        "AGGREGATE_SNAPSHOT_THRESHOLD": "1",
        "AGGREGATE_ADMIN_TOKEN": TOKEN,
    }
    running = start_service(directory / "svc", env=env, example=None)
    try:
        yield running
    finally:
        running.stop(signal.SIGTERM, timeout=30)


def program_dir(service: ServiceProcess) -> Path:
    return service.storage.parent


def admin(service: ServiceProcess, method: str, path: str) -> tuple[int, Any]:
    return service.http_call(method, path, token=TOKEN)


def version_now(service: ServiceProcess) -> str:
    status, listing = admin(service, "GET", "/admin/programs")
    assert status == 200, listing
    (entry,) = listing
    return str(entry["program_version"])


def test_program_routes_need_the_admin_token(service: ServiceProcess) -> None:
    assert service.http_call("GET", "/admin/programs")[0] == 401
    assert service.http_call("POST", "/admin/programs/reload")[0] == 401
    status, body = admin(service, "POST", "/admin/programs/reload?rebuild=maybe")
    assert status == 400
    assert "rebuild must be true or false" in body["error"]


def test_a_reload_swaps_programs_and_each_message_names_its_program_version(
    service: ServiceProcess,
) -> None:
    directory = program_dir(service)
    (directory / "decide.star").write_text((BANK / "decide.star").read_text())
    admin(service, "POST", "/admin/programs/reload")
    status, listing = admin(service, "GET", "/admin/programs")
    (entry,) = listing
    assert set(entry) == {
        "aggregate_type",
        "language",
        "isolation",
        "decide_sha256",
        "apply_sha256",
        "program_version",
        "loaded_at",
    }
    assert (entry["language"], entry["isolation"]) == ("starlark", "process")
    first = entry["program_version"]
    client = Client(service)
    opened = client.submit("bank-account", {"type": "OpenAccount", "owner": "ann"})
    assert stored_headers(service, subject(opened))["program-version"] == first
    big = client.submit("bank-account", {"type": "Deposit", "amount": 500}, opened.aggregate_id)
    assert big.version == 2

    (directory / "decide.star").write_text(CAPPED)
    status, report = admin(service, "POST", "/admin/programs/reload")
    assert status == 200, report
    assert (report["changed"], report["rebuilt"]) == (["bank-account"], [])
    second = version_now(service)
    assert second != first
    with pytest.raises(grpc.RpcError) as refused:
        client.submit("bank-account", {"type": "Deposit", "amount": 500}, opened.aggregate_id)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == "deposits above 100 are refused"
    small = client.submit("bank-account", {"type": "Deposit", "amount": 50}, opened.aggregate_id)
    assert stored_headers(service, subject(small))["program-version"] == second
    client.channel.close()


def test_a_refused_reload_changes_nothing_and_names_type_line_and_column(
    service: ServiceProcess,
) -> None:
    directory = program_dir(service)
    before = admin(service, "GET", "/admin/programs")[1]
    good = (directory / "decide.star").read_text()
    (directory / "decide.star").write_text("def decide(state, command):\n    return [SECRET}\n")
    try:
        status, body = admin(service, "POST", "/admin/programs/reload")
    finally:
        (directory / "decide.star").write_text(good)
    assert status == 422
    assert body["error"].startswith(
        "programs not reloaded: aggregate type bank-account at line 2, column 19:"
    )
    assert "SECRET" not in body["error"]
    assert str(directory) not in body["error"]
    assert admin(service, "GET", "/admin/programs")[1] == before
    client = Client(service)
    assert client.submit("bank-account", {"type": "OpenAccount", "owner": "bo"}).version == 1
    client.channel.close()


def test_sighup_reloads_the_programs(service: ServiceProcess) -> None:
    directory = program_dir(service)
    before = version_now(service)
    (directory / "decide.star").write_text(CAPPED + "\n# edited\n")
    service.proc.send_signal(signal.SIGHUP)
    service.wait_for_log("SIGHUP: programs reloaded")
    assert version_now(service) != before
    assert service.proc.poll() is None


def test_a_changed_apply_reaches_old_events_only_with_rebuild(service: ServiceProcess) -> None:
    directory = program_dir(service)
    client = Client(service)
    opened = client.submit("bank-account", {"type": "OpenAccount", "owner": "cy"})
    client.submit("bank-account", {"type": "Deposit", "amount": 7}, opened.aggregate_id)
    assert client.state("bank-account", opened.aggregate_id) == {"owner": "cy", "balance": 7}

    (directory / "apply.star").write_text(COUNTING_APPLY)
    status, report = admin(service, "POST", "/admin/programs/reload")
    assert (status, report["rebuilt"]) == (200, [])
    # The cached state is the past: the new apply only folds the events that come next.
    assert client.state("bank-account", opened.aggregate_id) == {"owner": "cy", "balance": 7}
    client.submit("bank-account", {"type": "Deposit", "amount": 1}, opened.aggregate_id)
    assert client.state("bank-account", opened.aggregate_id) == {
        "owner": "cy",
        "balance": 8,
        "events": 1,
    }

    (directory / "apply.star").write_text(COUNTING_APPLY + "\n# rebuilt\n")
    status, report = admin(service, "POST", "/admin/programs/reload?rebuild=true")
    assert (status, report["rebuilt"]) == (200, ["bank-account"])
    # Cache and snapshots dropped: the state is replayed from all three events.
    assert client.state("bank-account", opened.aggregate_id) == {
        "owner": "cy",
        "balance": 8,
        "events": 2,
    }
    client.channel.close()
