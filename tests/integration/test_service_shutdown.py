"""SIGTERM under load: the service drains, exits 0, and every acknowledged command is in
the stream exactly once after a restart (DESIGN §3 Shutdown)."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import pytest

from aggregate.adapters.jetstream.reader import read_events
from aggregate.domain.ids import AggregateKey, uuid7
from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.grpc_harness import grpcio_stubs
from tests.integration.service_harness import running_service, start_service

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration
WRITERS = 8
ACKS_BEFORE_SIGNAL = 150
MAX_COMMANDS = 3000
MAX_SECONDS = 45.0


@dataclass
class Ledger:
    """What the clients saw: acknowledged (aggregate, command id, version) triples."""

    acked: list[tuple[str, str, int]] = field(default_factory=list)
    refused_after_signal: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    def ack(self, agg: str, command_id: str, version: int) -> None:
        with self.cond:
            self.acked.append((agg, command_id, version))
            self.cond.notify_all()


def writer(address: str, ledger: Ledger, stop: threading.Event, aggregates: list[str]) -> None:
    stubs = grpcio_stubs()
    deadline = time.monotonic() + MAX_SECONDS
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = stubs.CommandServiceStub(channel)
        meta = (("x-tenant-id", "load"),)
        opened = stub.SubmitCommand(
            pb.SubmitCommandRequest(
                command_id=str(uuid7()),
                aggregate_type="bank-account",
                payload_json=json.dumps({"type": "OpenAccount", "owner": "w"}),
            ),
            metadata=meta,
            timeout=10,
        )
        agg = opened.aggregate_id
        aggregates.append(agg)
        ledger.ack(agg, opened.command_id, opened.version)
        for _ in range(MAX_COMMANDS // WRITERS):
            if time.monotonic() > deadline:
                return
            command_id = str(uuid7())
            try:
                reply = stub.SubmitCommand(
                    pb.SubmitCommandRequest(
                        command_id=command_id,
                        aggregate_type="bank-account",
                        aggregate_id=agg,
                        payload_json=json.dumps({"type": "Deposit", "amount": 1}),
                    ),
                    metadata=meta,
                    timeout=10,
                )
            except grpc.RpcError as exc:
                if stop.is_set():  # refused or cut off during shutdown: not acknowledged
                    ledger.refused_after_signal += 1
                    return
                raise AssertionError(f"failed before shutdown: {exc}") from exc
            ledger.ack(agg, reply.command_id, reply.version)


def test_sigterm_under_load_loses_no_acknowledged_command(tmp_path: Path) -> None:
    storage = tmp_path / "svc"
    ledger, stop = Ledger(), threading.Event()
    aggregates: list[str] = []
    env = {"AGGREGATE_LOG_LEVEL": "info", "AGGREGATE_SHUTDOWN_TIMEOUT_MS": "20000"}
    service = start_service(storage, env=env)
    address = f"{service.grpc[0]}:{service.grpc[1]}"
    errors: list[BaseException] = []

    def run_writer() -> None:
        try:
            writer(address, ledger, stop, aggregates)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run_writer) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    with ledger.cond:
        assert ledger.cond.wait_for(lambda: len(ledger.acked) >= ACKS_BEFORE_SIGNAL, timeout=60)
    stop.set()
    code = service.stop(signal.SIGTERM, timeout=60)
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert code == 0, service.text()
    assert service.wait_for_log("stopped (clean drain: True)", timeout=1)

    with running_service(storage) as again:
        url = (storage / "embedded-nats.url").read_text().strip()
        assert again.proc.poll() is None
        stored: dict[str, list[tuple[str, int]]] = {}
        for agg in aggregates:
            key = AggregateKey("load", "bank-account", uuid.UUID(agg))
            events = read_events([url], "AGGREGATE_EVENTS", key)
            stored[agg] = [(e["command_id"], e["version"]) for e in events]
    for agg, pairs in stored.items():
        ids = [c for c, _ in pairs]
        assert len(ids) == len(set(ids)), f"{agg}: a command is stored twice"
        assert [v for _, v in pairs] == list(range(1, len(pairs) + 1))
    found = {(agg, c, v) for agg, pairs in stored.items() for c, v in pairs}
    missing = [a for a in ledger.acked if a not in found]
    assert not missing, f"{len(missing)} acknowledged commands are missing: {missing[:5]}"
    print(  # the figures for the shutdown proof (pytest -s)
        f"acknowledged={len(ledger.acked)} found={len(found)} "
        f"refused_or_cut_after_sigterm={ledger.refused_after_signal}"
    )
