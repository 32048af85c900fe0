"""Programs in the real service process: a program that cannot compile within its limits
is refused at start-up, ``inline`` types are warned about, and gRPC health and admin HTTP
answer while an ``inline`` program runs long."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import grpc
import pytest
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from aggregate.adapters.nats_server import free_port
from aggregate.config import example_manifest_path
from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.grpc_harness import grpcio_stubs
from tests.integration.service_harness import start_service

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.integration.service_harness import ServiceProcess

pytestmark = pytest.mark.integration

APPLY = "def apply(state, event):\n    return state\n"
# About 150 million steps: seconds of work, finite.
SLOW = """
def decide(state, command):
    n = 0
    for a in range(command["outer"]):
        for b in range(10000):
            n += 1
    return [{"type": "Spun", "n": n}]
"""
INLINE_WARNING = "runs its Starlark programs with isolation: inline"


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory / "manifest.yaml"


def stop(proc: subprocess.Popen[str]) -> None:
    """Stop a service that went on starting: SIGTERM (it stops its embedded nats-server on
    the way out), then SIGKILL for its whole session."""
    proc.terminate()
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


@pytest.mark.parametrize("isolation", ["process", "inline"])
def test_a_program_that_cannot_compile_within_its_limits_stops_start_up_with_one_line(
    tmp_path: Path, isolation: str
) -> None:
    manifest = write(
        tmp_path,
        {
            "decide.star": 'def never():\n    return "x" * 2000000000\n\n'
            "def decide(state, command):\n    return []\n",
            "apply.star": APPLY,
            "manifest.yaml": f"aggregate_types:\n  bomb:\n    isolation: {isolation}\n"
            "    decide: decide.star\n    apply: apply.star\n",
        },
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATE_")}
    environment |= {
        "AGGREGATE_MANIFEST_PATH": str(manifest),
        "AGGREGATE_PROGRAM_MAX_MEMORY_MB": "256",
    }
    grpc_addr, http_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "aggregate.cli", "serve", "--storage", str(tmp_path / "s")]
    command += ["--grpc-addr", grpc_addr, "--http-addr", http_addr]
    proc = subprocess.Popen(
        command,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        stop(proc)  # start-up went ahead: it must not have
        raise
    done = subprocess.CompletedProcess(command, proc.returncode, "", stderr)
    assert done.returncode == 2, done.stderr[-3000:]  # a configuration error
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "aggregate serve: configuration error: aggregate type bomb: "
        f"{tmp_path / 'decide.star'} does not compile within the program limits: while "
        "compiling, the program worker hit its address-space limit of 256 MiB "
        "(max_memory_bytes, setting AGGREGATE_PROGRAM_MAX_MEMORY_MB): killed by SIGABRT: "
        "memory allocation of 2000000000 bytes failed. The compiler computes constant "
        'expressions such as "x" * 2000000000, even in code that never runs'
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    directory = tmp_path_factory.mktemp("programs")
    bank = example_manifest_path("bank").parent
    manifest = write(
        directory,
        {
            "slow.star": SLOW,
            "quick.star": "def decide(state, command):\n    return []\n",
            "apply.star": APPLY,
            "manifest.yaml": "aggregate_types:\n"
            "  slow:\n    isolation: inline\n    decide: slow.star\n    apply: apply.star\n"
            "  quick:\n    isolation: inline\n    decide: quick.star\n    apply: apply.star\n"
            f"  bank-account:\n    decide: {bank}/decide.star\n    apply: {bank}/apply.star\n",
        },
    )
    env = {
        "AGGREGATE_MANIFEST_PATH": str(manifest),
        "AGGREGATE_PROGRAM_TIMEOUT_MS": "120000",
        "AGGREGATE_PROGRAM_HARD_TIMEOUT_MS": "120000",
        "AGGREGATE_PROGRAM_WORKERS": "1",
    }
    running = start_service(directory / "svc", env=env, example=None)
    try:
        yield running
    finally:
        running.stop(signal.SIGTERM, timeout=30)


def test_each_inline_type_is_warned_about_once_at_start_up(service: ServiceProcess) -> None:
    warned = [
        line
        for line in service.lines
        if INLINE_WARNING in str(line.get("message")) and line.get("level") == "warning"
    ]
    named = sorted(str(line["message"]).split(" ")[2] for line in warned)
    assert named == ["quick", "slow"]  # not bank-account: process is the default
    assert all("aborts the whole service" in str(line["message"]) for line in warned)


def test_health_and_admin_answer_while_an_inline_program_runs_long(
    service: ServiceProcess,
) -> None:
    address = f"{service.grpc[0]}:{service.grpc[1]}"
    outcome: list[str] = []

    def slow_command() -> None:
        with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
            try:
                reply = (
                    grpcio_stubs()
                    .CommandServiceStub(channel)
                    .SubmitCommand(
                        pb.SubmitCommandRequest(
                            aggregate_type="slow",
                            payload_json=json.dumps({"type": "Spin", "outer": 15000}),
                        ),
                        metadata=(("x-tenant-id", "acme"),),
                        timeout=120,
                    )
                )
                outcome.append(f"OK {reply.version}")
            except grpc.RpcError as exc:
                outcome.append(exc.code().name)

    caller = threading.Thread(target=slow_command)
    caller.start()
    checks = 0
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString,
        )
        while "aggregate_commands_in_flight 1.0" not in str(service.http_call("GET", "/metrics")):
            assert caller.is_alive(), outcome
        # From now until it answers, the program runs; every check gets 1 s.
        while caller.is_alive():
            reply = check(HealthCheckRequest(service=""), timeout=1)
            assert reply.status == HealthCheckResponse.SERVING
            status, body = service.http_call("GET", "/health")
            assert status == 200, body
            in_flight = service.http_call("GET", "/metrics")[1]
            if "aggregate_commands_in_flight 1.0" in str(in_flight):
                checks += 1  # answered while the program was still running
    caller.join()
    assert outcome == ["OK 1"]
    assert checks >= 2
