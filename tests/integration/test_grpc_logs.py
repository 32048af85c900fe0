"""What a call leaves behind, through real gRPC servers and clients: the message an INTERNAL
error sends (an error id, never a server path or program source), the log lines of the call
(request context, error detail under its id, the access log) and the request id on the
stored message (DESIGN §8)."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from aggregate.adapters.grpc import GrpcOptions
from aggregate.adapters.jetstream import JetStreamEventStore
from aggregate.adapters.logging import configure_logging, reset_logging
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.config import load_manifest
from aggregate.config.values import AccessLogMode
from aggregate.domain.ids import uuid7
from aggregate.gateway.v1 import aggregate_pb2 as pb
from aggregate.programs.base import AggregateTypeSpec
from aggregate.programs.registry import ProgramRegistry, build_specs
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram, StaticTypes
from specs import bank
from tests.integration.grpc_harness import (
    ACME,
    CLIENT_KINDS,
    OPEN,
    TYPE,
    bank_handler,
    command,
    open_client,
    open_server,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from nats.aio.client import Client as NATS

    from aggregate.domain.envelopes import JsonObject

pytestmark = pytest.mark.anyio
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"

CRASH_MANIFEST = """\
aggregate_types:
  crash:
    isolation: inline
    decide_source: |
      def decide(state, command):
          return [{"type": "Divided", "n": 1 // command["zero"]}]
    apply_source: |
      def apply(state, event):
          return state
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class LogLines:
    """The JSON lines logged while the fixture is active."""

    def __init__(self, out: io.StringIO) -> None:
        self._out = out

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._out.getvalue().splitlines()]

    def of(self, logger: str) -> list[dict[str, Any]]:
        return [line for line in self.all() if line["logger"] == logger]


@pytest.fixture
def logs() -> Iterator[LogLines]:
    out = io.StringIO()
    configure_logging("info", stream=out)
    try:
        yield LogLines(out)
    finally:
        reset_logging()


def context(request_id: str, correlation_id: str = "corr-1") -> dict[str, str]:
    return {
        **ACME,
        "x-request-id": request_id,
        "x-correlation-id": correlation_id,
        "traceparent": TRACEPARENT,
    }


# --- INTERNAL errors: an error id for the client, the detail in the log ---------------------


def crash_handler(tmp_path: Path) -> CommandHandler:
    """A handler whose type ``crash`` runs a Starlark decide that divides by zero, loaded
    from a manifest file (so the program's origin names a server path)."""
    path = tmp_path / "obs.yaml"
    path.write_text(CRASH_MANIFEST)
    registry = ProgramRegistry(build_specs(load_manifest(path)))
    return CommandHandler(
        store=InMemoryEventStore(), types=registry, settings=HandlerSettings(retry_backoff_s=0)
    )


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_crashing_program_sends_an_error_id_and_logs_the_detail_under_it(
    kind: str, tmp_path: Path, logs: LogLines
) -> None:
    command_id = str(uuid7())
    async with open_server(crash_handler(tmp_path)) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(10):
            reply = await client.submit(
                command(
                    {"type": "Divide", "zero": 0}, command_id=command_id, aggregate_type="crash"
                ),
                context("req-crash", "corr-crash"),
            )
            streamed = await client.submit_many(
                [command({"type": "Divide", "zero": 0}, aggregate_type="crash")],
                context("req-crash-stream"),
            )
    assert reply.status == "INTERNAL"
    message = reply.message or ""
    for leak in (str(tmp_path), "obs.yaml", "decide_source", "//", "zero", "division", "4:"):
        assert leak not in message, message
    found = re.fullmatch(
        r"the program of aggregate type crash failed at line \d+, column \d+ "
        r"\(error id ([0-9a-f]{16})\); "
        r"the service log has the details",
        message,
    )
    assert found, message
    [line] = [line for line in logs.all() if line.get("error_id") == found.group(1)]
    detail = f"{line['message']}\n{line.get('exc', '')}"
    assert "Floor division by zero" in detail
    assert str(tmp_path / "obs.yaml") in detail
    assert line["level"] == "error"
    assert {k: line.get(k) for k in ("tenant_id", "correlation_id", "trace_id", "request_id")} == {
        "tenant_id": "acme",
        "correlation_id": "corr-crash",
        "trace_id": TRACE_ID,
        "request_id": "req-crash",
    }
    assert line["command_id"] == command_id
    # A stream item's error carries its own id, also found in the log.
    [item] = streamed.results
    assert item.error.code == "INTERNAL"
    streamed_id = re.search(r"error id ([0-9a-f]{16})", item.error.message)
    assert streamed_id
    assert streamed_id.group(1) != found.group(1)
    [stream_line] = [line for line in logs.all() if line.get("error_id") == streamed_id.group(1)]
    assert stream_line["request_id"] == "req-crash-stream"
    assert uuid.UUID(stream_line["command_id"])  # the server-made id is on the line too


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_other_internal_errors_send_only_an_error_id(kind: str, logs: LogLines) -> None:
    async with open_server(bank_handler(raising=True)) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(10):
            reply = await client.submit(command({"type": "Explode"}), context("req-boom"))
    assert reply.status == "INTERNAL"
    found = re.fullmatch(
        r"internal error \(error id ([0-9a-f]{16})\); the service log has the details",
        reply.message or "",
    )
    assert found, reply.message
    [line] = [line for line in logs.all() if line.get("error_id") == found.group(1)]
    assert "secret internal detail" in line["exc"]
    assert line["request_id"] == "req-boom"


# --- the request id: on every log line of the call and on the stored message --------------


def logging_handler(store: Any = None) -> CommandHandler:
    """The bank rules, with a decide that logs one line per command (as a program's own
    logging, or the handler's, would) so the test can see the context of the call's lines."""
    program_log = logging.getLogger("aggregate.test.program")

    def decide(state: JsonObject, cmd: JsonObject) -> Any:
        program_log.info("deciding %s", cmd["type"])
        return bank.decide(state, cmd)

    return CommandHandler(
        store=store or InMemoryEventStore(),
        types=StaticTypes(
            {TYPE: AggregateTypeSpec(TYPE, FunctionProgram(TYPE, decide, bank.apply))}
        ),
        settings=HandlerSettings(retry_backoff_s=0),
    )


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_log_lines_of_a_call_carry_its_request_id(kind: str, logs: LogLines) -> None:
    async with open_server(logging_handler()) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(10):
            unary = await client.submit(command(OPEN), context("req-unary"))
            streamed = await client.submit_many([command(OPEN), command(OPEN)], context("req-st"))
            generated = await client.submit(command(OPEN), ACME)
    assert unary.status == streamed.status == generated.status == "OK"
    lines = logs.of("aggregate.test.program")
    assert [line["request_id"] for line in lines] == [
        "req-unary",
        "req-st",
        "req-st",
        generated.initial_metadata["x-request-id"],
    ]
    assert lines[0]["command_id"] == unary.response.command_id


async def test_stored_message_carries_the_request_id(
    shared_nc: NATS, event_stream: str, logs: LogLines
) -> None:
    store = JetStreamEventStore(shared_nc, stream=event_stream)
    try:
        async with open_server(logging_handler(store)) as srv:
            with open_client("grpclib", srv.address) as client, anyio.fail_after(10):
                sent = await client.submit(command(OPEN), context("req-stored"))
                generated = await client.submit(command(OPEN), ACME)
                stored = []
                for reply in (sent, generated):
                    assert reply.status == "OK", reply
                    subject = f"tenant.acme.aggregate.{TYPE}.{reply.response.aggregate_id}"
                    msg = await shared_nc.jetstream().get_last_msg(event_stream, subject)
                    stored.append(dict(msg.headers or {}))
    finally:
        await store.aclose()
    assert stored[0]["x-request-id"] == "req-stored"
    assert stored[1]["x-request-id"] == generated.initial_metadata["x-request-id"]
    assert [line["request_id"] for line in logs.of("aggregate.test.program")] == [
        "req-stored",
        generated.initial_metadata["x-request-id"],
    ]


# --- the access log ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_access_log_has_one_line_per_call(kind: str, logs: LogLines) -> None:
    options = GrpcOptions(access_log=AccessLogMode.ON)
    command_id = str(uuid7())
    async with open_server(options=options) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(10):
            opened = await client.submit(command(OPEN, command_id=command_id), context("req-a1"))
            aggregate_id = opened.response.aggregate_id
            refused = await client.submit(
                command({"type": "Withdraw", "amount": 5}, aggregate_id=aggregate_id),
                context("req-a2"),
            )
            view = await client.get(
                pb.GetAggregateRequest(aggregate_type=TYPE, aggregate_id=aggregate_id),
                context("req-a3"),
            )
            streamed = await client.submit_many(
                [command({"type": "Deposit", "amount": 1}, aggregate_id=aggregate_id)] * 2,
                context("req-a4"),
            )
    statuses = (opened.status, refused.status, view.status, streamed.status)
    assert statuses == ("OK", "FAILED_PRECONDITION", "OK", "OK")
    lines = logs.of("aggregate.access")
    assert [(line["method"], line["status"], line["request_id"]) for line in lines] == [
        ("SubmitCommand", "OK", "req-a1"),
        ("SubmitCommand", "FAILED_PRECONDITION", "req-a2"),
        ("GetAggregate", "OK", "req-a3"),
        ("SubmitCommands", "OK", "req-a4"),
        ("SubmitCommands", "OK", "req-a4"),
    ]
    first = lines[0]
    assert first["level"] == "info"
    assert {k: first[k] for k in first if k not in ("ts", "duration_ms", "message")} == {
        "level": "info",
        "logger": "aggregate.access",
        "method": "SubmitCommand",
        "tenant_id": "acme",
        "aggregate_type": TYPE,
        "aggregate_id": aggregate_id,
        "outcome": "ok",
        "status": "OK",
        "command_id": command_id,
        "correlation_id": "corr-1",
        "trace_id": TRACE_ID,
        "request_id": "req-a1",
    }
    assert isinstance(first["duration_ms"], float)
    assert first["duration_ms"] >= 0
    assert first["message"].startswith("SubmitCommand OK ")
    assert lines[1]["outcome"] == "failed_precondition"
    assert "command_id" not in lines[2]
    assert uuid.UUID(lines[3]["command_id"]) != uuid.UUID(lines[4]["command_id"])


async def test_access_log_off_logs_no_line_and_sampled_every_failure(logs: LogLines) -> None:
    refused = command({"type": "Withdraw", "amount": 5}, aggregate_id=str(uuid7()))
    async with (
        open_server(options=GrpcOptions(access_log=AccessLogMode.OFF)) as off,
        open_server(
            options=GrpcOptions(access_log=AccessLogMode.SAMPLED, access_log_sample_every=3)
        ) as some,
    ):
        with (
            open_client("grpclib", off.address) as off_client,
            open_client("grpclib", some.address) as some_client,
            anyio.fail_after(10),
        ):
            for n in range(7):
                assert (await off_client.submit(command(OPEN), context(f"off-{n}"))).status == "OK"
                assert (await some_client.submit(command(OPEN), context(f"on-{n}"))).status == "OK"
            assert (await off_client.submit(refused, context("off-x"))).status != "OK"
            assert (await some_client.submit(refused, context("on-x"))).status != "OK"
    lines = logs.of("aggregate.access")
    assert [(line["request_id"], line["status"]) for line in lines] == [
        ("on-2", "OK"),
        ("on-5", "OK"),
        ("on-x", "FAILED_PRECONDITION"),
    ]
