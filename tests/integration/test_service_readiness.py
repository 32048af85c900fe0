"""Readiness of the real service follows its NATS connection everywhere an operator looks:
the standard gRPC health service (overall and per service, through grpcio), admin ``/ready``
and ``aggregate ready`` (the container health check)."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import grpc
import pytest
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from aggregate.adapters.grpc import COMMAND_SERVICE
from aggregate.adapters.nats_server import free_port
from tests.integration.service_harness import ServiceProcess, running_service

if TYPE_CHECKING:
    from pathlib import Path

    from aggregate.adapters.nats_server import NatsServerProcess

pytestmark = pytest.mark.integration
SERVING, NOT_SERVING = HealthCheckResponse.SERVING, HealthCheckResponse.NOT_SERVING


def health(service: ServiceProcess) -> list[int]:
    """grpcio's answer to grpc.health.v1.Health/Check for "" (the server) and the service."""
    address = "{}:{}".format(*service.grpc)
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString,
        )
        return [
            int(check(HealthCheckRequest(service=name), timeout=10).status)
            for name in ("", COMMAND_SERVICE)
        ]


def ready_cli(http: tuple[str, int]) -> int:
    """``aggregate ready``'s exit code for the admin address ``http``."""
    return subprocess.run(
        [sys.executable, "-m", "aggregate", "ready", "--http-addr", "{}:{}".format(*http)],
        capture_output=True,
        timeout=60,
        check=False,
    ).returncode


def test_grpc_health_and_ready_follow_the_nats_connection(
    tmp_path: Path, nats_server: NatsServerProcess
) -> None:
    env = {"AGGREGATE_NATS_URL": nats_server.url, "AGGREGATE_LOG_LEVEL": "info"}
    with running_service(tmp_path / "svc", env=env) as service:
        before = (health(service), service.http_call("GET", "/ready"), ready_cli(service.http))

        nats_server.stop()
        service.wait_for_log("NATS disconnected")
        down = (health(service), service.http_call("GET", "/ready"), ready_cli(service.http))

        nats_server.start()
        service.wait_for_log("NATS reconnected")
        again = (health(service), service.http_call("GET", "/ready"), ready_cli(service.http))

    assert before == ([SERVING, SERVING], (200, True), 0)
    assert down == ([NOT_SERVING, NOT_SERVING], (503, False), 1)
    assert again == ([SERVING, SERVING], (200, True), 0)


def test_ready_cli_exits_3_when_nothing_answers() -> None:
    assert ready_cli(("127.0.0.1", free_port())) == 3
