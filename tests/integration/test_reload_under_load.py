"""Programs reloaded 20 times while 8 clients submit commands, in the real service process:
no command fails or is lost, and every stored message names the program version that was
serving while its command ran. Prints the command latency percentiles during the reloads
(a figure to report; nothing here asserts on time)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import nats
import pytest

from aggregate.config import example_manifest_path
from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.grpc_harness import grpcio_stubs
from tests.integration.service_harness import start_service

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

CLIENTS = 8
RELOADS = 20
TOKEN = "reload-under-load-token"
TENANT = (("x-tenant-id", "acme"),)
BANK = example_manifest_path("bank").parent
TYPE = "bank-account"


@dataclass
class Sent:
    """One command as its client saw it (monotonic seconds)."""

    aggregate_id: str
    command_id: str
    started: float
    ended: float


@dataclass
class Load:
    """What the clients did; ``done`` counts answered commands (under ``lock``)."""

    sent: list[Sent] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    done: int = 0
    lock: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)

    def answered(self, sent: Sent | None, failure: str | None = None) -> None:
        with self.lock:
            if sent is not None:
                self.sent.append(sent)
            if failure is not None:
                self.failures.append(failure)
            self.done += 1
            self.lock.notify_all()

    def wait_for(self, count: int, timeout: float = 120) -> None:
        with self.lock:
            assert self.lock.wait_for(lambda: self.done >= count or self.failures, timeout)


def client(address: str, load: Load) -> None:
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = grpcio_stubs().CommandServiceStub(channel)

        def submit(payload: dict[str, Any], aggregate_id: str = "") -> Any:
            request = pb.SubmitCommandRequest(
                aggregate_type=TYPE, aggregate_id=aggregate_id, payload_json=json.dumps(payload)
            )
            started = time.monotonic()
            try:
                reply = stub.SubmitCommand(request, metadata=TENANT, timeout=60)
            except grpc.RpcError as exc:
                load.answered(None, f"{exc.code().name}: {exc.details()}")
                raise
            load.answered(Sent(reply.aggregate_id, reply.command_id, started, time.monotonic()))
            return reply

        try:
            aggregate = submit({"type": "OpenAccount", "owner": "ann"}).aggregate_id
            while not load.stop.is_set():
                submit({"type": "Deposit", "amount": 1}, aggregate)
        except grpc.RpcError:
            return


def stored_messages(url: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """Every message of the type's subjects: (headers, body)."""

    async def read() -> list[tuple[dict[str, str], dict[str, Any]]]:
        nc = await nats.connect(url, connect_timeout=10)
        try:
            js = nc.jetstream(timeout=10)
            info = await js.stream_info("AGGREGATE_EVENTS")
            found = []
            for seq in range(1, info.state.last_seq + 1):
                message = await js.get_msg("AGGREGATE_EVENTS", seq, direct=True)
                found.append((dict(message.headers or {}), json.loads(message.data or b"{}")))
            return found
        finally:
            await nc.close()

    return asyncio.run(read())


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def test_reloads_under_load_drop_nothing_and_each_message_names_its_version(
    tmp_path: Path,
) -> None:
    shutil.copy(BANK / "apply.star", tmp_path / "apply.star")
    decide = (BANK / "decide.star").read_text()
    (tmp_path / "decide.star").write_text(decide)
    (tmp_path / "manifest.yaml").write_text(
        f"aggregate_types:\n  {TYPE}:\n    decide: decide.star\n    apply: apply.star\n"
    )
    env = {
        "AGGREGATE_MANIFEST_PATH": str(tmp_path / "manifest.yaml"),
        "AGGREGATE_PROGRAM_WORKERS": "2",
        "AGGREGATE_ADMIN_TOKEN": TOKEN,
    }
    service = start_service(tmp_path / "svc", env=env, example=None)
    load = Load()
    threads = [
        threading.Thread(target=client, args=(f"{service.grpc[0]}:{service.grpc[1]}", load))
        for _ in range(CLIENTS)
    ]
    try:
        status, listing = service.http_call("GET", "/admin/programs", token=TOKEN)
        assert status == 200, listing
        # (version, its reload sent, its reload answered): a version serves from some time
        # in its reload's call until some time in the next one's.
        timeline: list[tuple[str, float, float]] = [(listing[0]["program_version"], 0.0, 0.0)]
        for thread in threads:
            thread.start()
        load.wait_for(4 * CLIENTS)
        reloads_began = time.monotonic()
        for number in range(1, RELOADS + 1):
            (tmp_path / "decide.star").write_text(f"{decide}\n# reload {number}\n")
            sent = time.monotonic()
            status, report = service.http_call("POST", "/admin/programs/reload", token=TOKEN)
            answered = time.monotonic()
            assert status == 200, report
            assert report["changed"] == [TYPE]
            timeline.append((report["types"][0]["program_version"], sent, answered))
            with load.lock:
                seen = load.done
            load.wait_for(seen + CLIENTS)  # the new version decides some commands
        reloads_ended = time.monotonic()
        load.stop.set()
        for thread in threads:
            thread.join(120)
        assert not load.failures, load.failures[:5]

        versions = [v for v, _, _ in timeline]
        assert len(set(versions)) == RELOADS + 1

        def allowed(sent: Sent) -> set[str]:
            ok = set()
            for index, (version, begins, _) in enumerate(timeline):
                ends = timeline[index + 1][2] if index + 1 < len(timeline) else float("inf")
                if begins <= sent.ended and sent.started <= ends:
                    ok.add(version)
            return ok

        url = (service.storage / "embedded-nats.url").read_text().strip()
        messages = stored_messages(url)
        by_command = {body["command_id"]: headers for headers, body in messages}
        assert len(by_command) == len(messages)  # each command stored once
        for sent in load.sent:
            headers = by_command.pop(sent.command_id)  # answered, so stored
            assert headers["program-version"] in allowed(sent), (sent, headers)
        assert not by_command, "messages stored for commands nobody was answered for"

        client_count = len({s.aggregate_id for s in load.sent})
        assert client_count == CLIENTS
        latencies = [
            s.ended - s.started
            for s in load.sent
            if s.started <= reloads_ended and s.ended >= reloads_began
        ]
        print(
            f"\nreload under load: {RELOADS} reloads in {reloads_ended - reloads_began:.1f} s, "
            f"{len(load.sent)} commands from {CLIENTS} clients, 0 failed, 0 lost; during the "
            f"reloads {len(latencies)} commands: p50 {statistics.median(latencies) * 1000:.1f} "
            f"ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms, max "
            f"{max(latencies) * 1000:.1f} ms"
        )
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(120)
        service.stop(signal.SIGTERM, timeout=60)
