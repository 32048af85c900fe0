"""Start-up of the real service process: it gives up on an unreachable NATS within the
connect timeout (exit code 3, one line saying why), a signal stops any phase of start-up at
once, a busy port is one line of configuration error (exit code 2), and an embedded
nats-server left running by a killed service is stopped before a new one starts on its
store."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from aggregate.adapters.nats_server import free_port, process_running
from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.grpc_harness import TYPE, command, open_client
from tests.integration.service_harness import ServiceProcess, launch_service, start_service

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration
CONNECT_TIMEOUT_S = 2.0
CONNECTING = "connecting to NATS"


def finish(service: ServiceProcess, timeout: float) -> int:
    """Wait for the process to exit by itself (kill it after ``timeout``); its exit code,
    with every line it wrote read."""
    try:
        service.proc.wait(timeout)
    except BaseException:
        service.stop(signal.SIGKILL)
        raise
    return service.stop()


def plain_lines(service: ServiceProcess) -> list[str]:
    """What the command printed outside its JSON log lines (the CLI's own messages)."""
    return [str(line["message"]) for line in service.lines if set(line) == {"message"}]


def assert_one_clear_line(service: ServiceProcess, *fragments: str) -> None:
    printed = plain_lines(service)
    assert len(printed) == 1, printed
    assert printed[0].startswith("aggregate serve: "), printed
    for fragment in fragments:
        assert fragment in printed[0], printed
    assert "Traceback" not in service.text()
    assert not any("NATS error" in str(line.get("message")) for line in service.lines)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a hung server)."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as sock:
        yield sock.getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_unreachable_nats_fails_within_the_connect_timeout_with_exit_code_3(
    tmp_path: Path, silent_server: int, kind: str
) -> None:
    port = free_port() if kind == "refused" else silent_server
    env = {
        "AGGREGATE_NATS_URL": f"nats://127.0.0.1:{port}",
        "AGGREGATE_NATS_CONNECT_TIMEOUT_MS": str(int(CONNECT_TIMEOUT_S * 1000)),
    }
    service = launch_service(tmp_path / "svc", env=env)
    service.wait_for_log(CONNECTING)
    started = time.monotonic()
    code = finish(service, timeout=CONNECT_TIMEOUT_S + 2)
    print(f"{kind}: exit {code} {time.monotonic() - started:.2f} s after connecting began")
    assert code == 3, service.text()
    assert_one_clear_line(
        service,
        f"cannot connect to NATS at nats://127.0.0.1:{port}",
        "AGGREGATE_NATS_CONNECT_TIMEOUT_MS",
    )


def test_sigterm_while_connecting_to_nats_exits_at_once(tmp_path: Path) -> None:
    env = {
        "AGGREGATE_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "AGGREGATE_NATS_CONNECT_TIMEOUT_MS": "120000",
    }
    service = launch_service(tmp_path / "svc", env=env)
    service.wait_for_log(CONNECTING)
    service.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = finish(service, timeout=1.0)
    print(f"SIGTERM while connecting: exit {code} after {time.monotonic() - started:.2f} s")
    assert code == 0
    assert service.wait_for_log("start-up abandoned", timeout=1)
    assert "Traceback" not in service.text()


@pytest.mark.parametrize("phase", ["embedded nats-server listening", CONNECTING])
def test_sigterm_during_start_up_with_embedded_nats_stops_everything_at_once(
    tmp_path: Path, phase: str
) -> None:
    service = launch_service(tmp_path / "svc")
    listening = service.wait_for_log("embedded nats-server listening on nats://")
    nats_port = int(str(listening["message"]).rsplit(":", 1)[1])
    service.wait_for_log(phase)
    service.proc.send_signal(signal.SIGTERM)
    code = finish(service, timeout=1.0)
    assert code == 0, service.text()
    assert service.wait_for_log("embedded nats-server stopped", timeout=1)
    assert not any("serving gRPC on" in str(line.get("message")) for line in service.lines)
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", nats_port), timeout=2),
    ):
        pass


@pytest.mark.parametrize("which", ["grpc", "http"])
def test_a_busy_port_is_one_line_and_exit_code_2(tmp_path: Path, which: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        ports = {"grpc_port": port} if which == "grpc" else {"http_port": port}
        service = launch_service(tmp_path / "svc", **ports)
        code = finish(service, timeout=60)
    assert code == 2, service.text()
    variable = "AGGREGATE_GRPC_ADDR" if which == "grpc" else "AGGREGATE_HTTP_ADDR"
    printed = plain_lines(service)
    assert len(printed) == 1, printed
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in printed[0]
    assert variable in printed[0]
    assert "Traceback" not in service.text()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_node_left_by_a_killed_service_is_stopped_before_the_next_start(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "svc"
    first = start_service(storage)
    try:
        with open_client("grpclib", first.grpc) as client:
            opened = await client.submit(
                command({"type": "OpenAccount", "owner": "ann"}), {"x-tenant-id": "acme"}
            )
        orphan = int((storage / "nats" / "aggregate-embedded.pid").read_text())
    finally:
        first.stop(signal.SIGKILL)  # a killed process cannot stop its child
    assert opened.status == "OK"
    account = str(opened.response.aggregate_id)
    assert process_running(orphan)

    second = start_service(storage)
    try:
        line = second.wait_for_log("left running on this storage path")
        assert f"pid {orphan}" in str(line["message"])
        assert not process_running(orphan)
        with open_client("grpclib", second.grpc) as client:
            read = await client.get(
                pb.GetAggregateRequest(aggregate_type=TYPE, aggregate_id=account),
                {"x-tenant-id": "acme"},
            )
        assert (read.status, read.response.version) == ("OK", 1)
    finally:
        second.stop()
        if process_running(orphan):  # the fix failed: do not leave the node behind
            os.kill(orphan, signal.SIGKILL)
