"""A second signal during a drain forces an immediate exit (DESIGN §3 Shutdown)."""

from __future__ import annotations

import json
import signal
import socket
import threading
from typing import TYPE_CHECKING

import grpc
import pytest

from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.grpc_harness import grpcio_stubs
from tests.integration.service_harness import start_service

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

SLOW_DECIDE = """
def decide(state, command):
    n = 0
    for i in range(command["spin"]):
        n += 1
    return [{"type": "Spun", "n": n}]
"""


def test_second_signal_exits_at_once_and_stops_the_embedded_nats(tmp_path: Path) -> None:
    (tmp_path / "decide.star").write_text(SLOW_DECIDE)
    (tmp_path / "apply.star").write_text("def apply(state, event):\n    return state\n")
    (tmp_path / "manifest.yaml").write_text(
        "aggregate_types:\n  slow:\n    isolation: inline\n"
        "    decide: decide.star\n    apply: apply.star\n"
    )
    env = {
        "AGGREGATE_MANIFEST_PATH": str(tmp_path / "manifest.yaml"),
        "AGGREGATE_PROGRAM_TIMEOUT_MS": "120000",
        "AGGREGATE_PROGRAM_HARD_TIMEOUT_MS": "120000",
        "AGGREGATE_SHUTDOWN_TIMEOUT_MS": "120000",
        "AGGREGATE_LOG_LEVEL": "info",
    }
    service = start_service(tmp_path / "svc", env=env, example=None)
    nats_port = int((tmp_path / "svc" / "embedded-nats.url").read_text().rsplit(":", 1)[1])
    address = f"{service.grpc[0]}:{service.grpc[1]}"
    outcome: list[str] = []

    def slow_command() -> None:
        with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
            stub = grpcio_stubs().CommandServiceStub(channel)
            try:
                stub.SubmitCommand(
                    pb.SubmitCommandRequest(
                        aggregate_type="slow",
                        payload_json=json.dumps({"type": "Spin", "spin": 10**9}),
                    ),
                    metadata=(("x-tenant-id", "acme"),),
                    timeout=120,
                )
                outcome.append("OK")
            except grpc.RpcError as exc:
                outcome.append(exc.code().name)

    caller = threading.Thread(target=slow_command)
    caller.start()
    try:
        # The command is in flight once the island reports it; then the first signal
        # starts a drain that would wait for it.
        deadline_checks = 0
        while service.http_call("GET", "/metrics")[1].find("aggregate_commands_in_flight 1.0") < 0:
            deadline_checks += 1
            assert deadline_checks < 2000, "the slow command never got in flight"
        service.proc.send_signal(signal.SIGTERM)
        service.wait_for_log("SIGTERM received: draining", timeout=30)
        service.proc.send_signal(signal.SIGTERM)
        code = service.proc.wait(timeout=10)
    finally:
        if service.proc.poll() is None:
            service.stop(signal.SIGKILL)
        caller.join(timeout=60)
    assert code == 128 + signal.SIGTERM
    assert outcome
    assert outcome[0] != "OK"  # cut off, not completed
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", nats_port), timeout=2),
    ):
        pass  # the embedded nats-server was killed with the service


def test_clean_shutdown_logs_the_nats_disconnect_as_expected_not_as_a_warning(
    tmp_path: Path,
) -> None:
    service = start_service(tmp_path / "svc", env={"AGGREGATE_LOG_LEVEL": "info"})
    code = service.stop(signal.SIGTERM, timeout=60)
    assert code == 0, service.text()
    service.wait_for_log("stopped (clean drain: True)", timeout=1)
    loud = [
        line
        for line in service.lines
        if line.get("level") in ("warning", "error", "critical")
        and "nats" in str(line.get("message", "")).lower()
    ]
    assert not loud, loud
    closed = service.wait_for_log("NATS connection closed", timeout=1)
    assert closed["level"] == "info"
