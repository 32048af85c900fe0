"""Protection in the real service process, over a real nats-server, through grpcio.

- NATS stopped: once the event store's breaker is open, commands fail fast with UNAVAILABLE
  and ``retry-after-ms`` (many calls complete while NATS is down), ``/health`` names the
  breaker; NATS back: commands succeed again, no restart.
- Noisy neighbour: a tenant flooding past its quota gets RESOURCE_EXHAUSTED with
  ``retry-after-ms``; a steady tenant beside it is never refused.
- Quota overrides in the KV key apply live; an invalid value is ignored.

The latencies are printed (``-s``) for the record, never asserted.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from typing import TYPE_CHECKING

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aggregate.adapters.placement_kv import DEFAULT_BUCKET
from tests.integration.conftest import open_nats
from tests.integration.grpc_harness import OPEN, command, grpcio_stubs
from tests.integration.service_harness import running_service

if TYPE_CHECKING:
    from pathlib import Path

    from aggregate.adapters.nats_server import NatsServerProcess
    from aggregate.gateway.v1 import aggregate_pb2 as pb
    from tests.integration.service_harness import ServiceProcess

pytestmark = pytest.mark.integration


class Caller:
    """grpcio's client of one service: (status name, trailers, seconds) per command."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.channel = grpc.insecure_channel(
            "{}:{}".format(*address), options=[("grpc.enable_http_proxy", 0)]
        )
        self.stub = grpcio_stubs().CommandServiceStub(self.channel)

    def submit(
        self, tenant: str, request: pb.SubmitCommandRequest | None = None
    ) -> tuple[str, dict[str, str], float]:
        started = time.perf_counter()
        try:
            self.stub.SubmitCommand(
                request or command(OPEN), metadata=(("x-tenant-id", tenant),), timeout=30
            )
        except grpc.RpcError as exc:
            trailers = {k: v for k, v in exc.trailing_metadata() or () if isinstance(v, str)}  # type: ignore[attr-defined]
            return exc.code().name, trailers, time.perf_counter() - started  # type: ignore[attr-defined]
        return "OK", {}, time.perf_counter() - started

    def stream(self, tenant: str, count: int) -> list[str]:
        """``count`` OpenAccount commands on one SubmitCommands stream: each result's code."""
        call = self.stub.SubmitCommands(
            iter([command(OPEN) for _ in range(count)]),
            metadata=(("x-tenant-id", tenant),),
            timeout=120,
        )
        return [r.error.code if r.WhichOneof("result") == "error" else "OK" for r in call]

    def close(self) -> None:
        self.channel.close()


def samples(service: ServiceProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = service.http_call("GET", "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_nats_down_fails_fast_once_the_breaker_opens_and_recovers_without_restart(
    tmp_path: Path, nats_server: NatsServerProcess
) -> None:
    env = {
        "AGGREGATE_NATS_URL": nats_server.url,
        "AGGREGATE_LOG_LEVEL": "info",
        "AGGREGATE_NATS_TIMEOUT_MS": "1000",
        "AGGREGATE_BREAKER_FAILURE_THRESHOLD": "3",
        "AGGREGATE_BREAKER_OPEN_MS": "1000",
    }
    with running_service(tmp_path / "svc", env=env) as service:
        caller = Caller(service.grpc)
        try:
            assert caller.submit("acme")[0] == "OK"
            pid = service.proc.pid

            nats_server.stop()
            service.wait_for_log("NATS disconnected")
            tripping: list[tuple[str, dict[str, str], float]] = []
            deadline = time.monotonic() + 60
            while not (tripping and "retry-after-ms" in tripping[-1][1]):
                assert time.monotonic() < deadline, tripping
                tripping.append(caller.submit("acme"))
            service.wait_for_log("circuit breaker event_store: closed -> open")
            fast = [caller.submit("acme") for _ in range(200)]
            _, health = service.http_call("GET", "/health")
            ready = service.http_call("GET", "/ready")
            metrics = samples(service)

            nats_server.start()
            back = time.perf_counter()
            recovered: list[tuple[str, dict[str, str], float]] = []
            while not (recovered and recovered[-1][0] == "OK"):
                assert time.perf_counter() - back < 30, recovered[-5:]
                recovered.append(reply := caller.submit("acme"))
                if "retry-after-ms" in reply[1]:
                    # The client does what the trailer says (not a synchronisation sleep).
                    time.sleep(int(reply[1]["retry-after-ms"]) / 1000)
            recovery_s = time.perf_counter() - back
            after = [caller.submit("acme")[0] for _ in range(5)]
            _, healthy = service.http_call("GET", "/health")
        finally:
            caller.close()
        assert service.proc.pid == pid
        assert service.proc.poll() is None

    assert {status for status, _, _ in tripping} == {"UNAVAILABLE"}
    assert len(tripping) >= 3  # the failures that opened it
    assert {status for status, _, _ in fast} == {"UNAVAILABLE"}
    refused = [t for _, t, _ in fast if "retry-after-ms" in t]
    assert len(refused) >= 190  # all but the odd half-open probe
    assert all(1 <= int(t["retry-after-ms"]) <= 1000 for t in refused)
    breaker = {b["name"]: b for b in health["breakers"]}["event_store"]
    assert breaker["state"] in ("open", "half_open")
    assert breaker["consecutive_failures"] >= 3
    assert breaker["reason"]
    assert health["status"] == "degraded"
    assert ready == (503, False)
    assert metrics[("aggregate_breaker_state", frozenset({("breaker", "event_store")}))] >= 1
    opened = (
        "aggregate_breaker_transitions_total",
        frozenset({("breaker", "event_store"), ("to", "open")}),
    )
    assert metrics[opened] >= 1
    assert after == ["OK"] * 5
    assert {b["name"]: b["state"] for b in healthy["breakers"]} == {
        "event_store": "closed",
        "snapshot_store": "closed",
    }
    seconds = [s for _, _, s in fast]
    print(
        f"\nbreaker open: {len(fast)} commands, p50 {statistics.median(seconds) * 1000:.3f} ms, "
        f"p99 {quantile(seconds, 0.99) * 1000:.3f} ms (client round trip); "
        f"recovered {recovery_s:.2f} s after nats-server was listening again"
    )


def test_a_flooding_tenant_is_refused_and_a_steady_one_never_is(
    tmp_path: Path, nats_server: NatsServerProcess
) -> None:
    config = tmp_path / "aggregate.yaml"
    config.write_text(
        "quota_commands_per_second: 20\n"
        "quota_overrides:\n"
        "  steady: {commands_per_second: 1000, burst: 1000}\n"
    )
    env = {
        "AGGREGATE_NATS_URL": nats_server.url,
        "AGGREGATE_LOG_LEVEL": "info",
        "AGGREGATE_CONFIG_PATH": str(config),
    }
    with running_service(tmp_path / "svc", env=env) as service:
        flooder, steady = Caller(service.grpc), Caller(service.grpc)
        flood: list[str] = []
        try:
            thread = threading.Thread(target=lambda: flood.extend(flooder.stream("flooder", 400)))
            started = time.monotonic()
            thread.start()
            calm = [steady.submit("steady") for _ in range(60)]
            thread.join(120)
            elapsed = time.monotonic() - started
            _, flooder_status = service.http_call("GET", "/admin/tenant/flooder/status")
            _, steady_status = service.http_call("GET", "/admin/tenant/steady/status")
            metrics = samples(service)
        finally:
            flooder.close()
            steady.close()
    assert not thread.is_alive()
    assert len(flood) == 400
    assert set(flood) == {"OK", "RESOURCE_EXHAUSTED"}
    assert flood.count("OK") <= 20 + 20 * elapsed + 1  # at most burst + rate x time
    assert [status for status, _, _ in calm] == ["OK"] * 60
    assert flooder_status["quota"]["commands_per_second"] == 20
    assert flooder_status["quota"]["rejected"] >= flood.count("RESOURCE_EXHAUSTED")
    assert steady_status["quota"] == {
        "commands_per_second": 1000,
        "burst": 1000,
        "max_in_flight": 0,
        "tokens": steady_status["quota"]["tokens"],
        "in_flight": 0,
        "rejected": 0,
    }
    rejected = metrics[
        (
            "aggregate_quota_rejections_total",
            frozenset({("tenant_id", "flooder"), ("reason", "rate")}),
        )
    ]
    assert rejected >= flood.count("RESOURCE_EXHAUSTED")
    assert (
        "aggregate_quota_rejections_total",
        frozenset({("tenant_id", "steady"), ("reason", "rate")}),
    ) not in metrics
    # the flooder's stream went into debt: from then on it was read at its schedule
    assert metrics[("aggregate_quota_paced_total", frozenset())] >= 1


async def _put_key(url: str, key: str, value: bytes) -> None:
    async with open_nats(url) as nc:
        kv = await nc.jetstream().key_value(DEFAULT_BUCKET)
        await kv.put(key, value)


def test_kv_quota_overrides_apply_live_and_invalid_ones_are_ignored(
    tmp_path: Path, nats_server: NatsServerProcess
) -> None:
    import anyio

    env = {"AGGREGATE_NATS_URL": nats_server.url, "AGGREGATE_LOG_LEVEL": "info"}
    with running_service(tmp_path / "svc", env=env) as service:
        caller = Caller(service.grpc)
        try:
            service.wait_for_log("quota overrides in force: 0 tenants")
            before = [caller.submit("acme")[0] for _ in range(3)]
            override = {"acme": {"commands_per_second": 1, "burst": 2}}
            anyio.run(_put_key, nats_server.url, "aggregate_quotas", json.dumps(override).encode())
            service.wait_for_log("quota overrides in force: 1 tenants")
            limited = [caller.submit("acme") for _ in range(3)]
            other = caller.submit("globex")[0]
            anyio.run(_put_key, nats_server.url, "aggregate_quotas", b'{"acme": {"burst": -1}}')
            service.wait_for_log("ignoring invalid quota overrides")
            _, status = service.http_call("GET", "/admin/tenant/acme/status")
        finally:
            caller.close()
    assert before == ["OK"] * 3
    assert [s for s, _, _ in limited] == ["OK", "OK", "RESOURCE_EXHAUSTED"]
    assert 1 <= int(limited[2][1]["retry-after-ms"]) <= 1000
    assert other == "OK"
    assert status["quota"]["commands_per_second"] == 1  # the last good overrides stay
    assert status["quota"]["burst"] == 2
