"""Shared pieces of the gRPC integration tests: a bank-account handler over the in-memory
store, a server on 127.0.0.1 port 0, and two independent clients behind one interface.

- ``GrpclibClient``: grpclib's asyncio client (the same HTTP/2 stack as the server).
- ``GrpcioClient``: grpcio's synchronous API in worker threads (its own C-core HTTP/2
  implementation), with stubs generated from protos/ at test time, never committed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import grpc
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from aggregate.adapters.grpc import CommandServer, GrpcOptions
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.domain.errors import TenantUnavailableError
from aggregate.gateway.v1 import aggregate_grpc, query_grpc
from aggregate.gateway.v1 import aggregate_pb2 as pb
from aggregate.gateway.v1 import query_pb2 as qpb
from aggregate.programs.base import AggregateTypeSpec
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram, StaticTypes
from specs import bank

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence
    from types import ModuleType

    from aggregate.application.ports import TenantGate
    from aggregate.domain.envelopes import JsonObject

ROOT = Path(__file__).resolve().parents[2]
PROTO = "aggregate/gateway/v1/aggregate.proto"
QUERY_PROTO = "aggregate/gateway/v1/query.proto"
TYPE = "bank-account"
ACME = {"x-tenant-id": "acme"}
"""Metadata of a call for the tenant ``acme``."""
OPEN = {"type": "OpenAccount", "owner": "ann"}
"""The payload that opens a bank account."""
TIMEOUT = 10.0


# --- server side ---------------------------------------------------------------------------


class GatedProgram:
    """The bank rules, except that a command with ``"hold": true`` waits in ``decide``
    until ``release`` is set; counts how many entered, wait at once, and were cancelled."""

    name = TYPE

    def __init__(self) -> None:
        self.inner = FunctionProgram(TYPE, bank.decide, bank.apply)
        self.release = anyio.Event()
        self.holding = 0
        self.max_holding = 0
        self.entered = 0
        self.cancelled = 0
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def decide(self, state: JsonObject, command: JsonObject) -> Any:
        if command.get("hold"):
            self.entered += 1
            self.holding += 1
            self.max_holding = max(self.max_holding, self.holding)
            self._notify()
            try:
                await self.release.wait()
            except BaseException:
                self.cancelled += 1
                self._notify()
                raise
            finally:
                self.holding -= 1
        return await self.inner.decide(state, command)

    async def apply(self, state: JsonObject, events: Sequence[JsonObject]) -> JsonObject:
        return await self.inner.apply(state, events)

    async def wait_entered(self, count: int) -> None:
        """Wait until ``count`` held commands have entered ``decide`` in total."""
        while self.entered < count:
            await self._changed.wait()

    async def wait_cancelled(self, count: int) -> None:
        """Wait until ``count`` held commands have been cancelled in total."""
        while self.cancelled < count:
            await self._changed.wait()


class RefusingGate:
    """A tenant gate that refuses every tenant: it moved to shard-b."""

    def admit(self, tenant_id: str) -> contextlib.AbstractContextManager[None]:
        raise TenantUnavailableError(f"tenant {tenant_id!r} is not hosted here", owner="shard-b")


@dataclass
class RecordingObserver:
    """A ``CommandObserver`` that remembers its calls."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def _record(self, call: tuple[Any, ...]) -> None:
        self.calls.append(call)
        self._changed.set()
        self._changed = anyio.Event()

    def command_started(self, tenant_id: str, aggregate_type: str) -> None:
        self._record(("started", tenant_id, aggregate_type))

    def command_finished(
        self, tenant_id: str, aggregate_type: str, outcome: str, seconds: float
    ) -> None:
        assert seconds >= 0
        self._record(("finished", tenant_id, aggregate_type, outcome))

    def read_finished(
        self, method: str, tenant_id: str, aggregate_type: str, outcome: str, seconds: float
    ) -> None:
        assert seconds >= 0
        self._record(("read", method, tenant_id, aggregate_type, outcome))

    def tenant_error(self, tenant_id: str, reason: str) -> None:
        self._record(("tenant_error", tenant_id, reason))

    async def wait_for(self, call: tuple[Any, ...]) -> None:
        """Wait until ``call`` has been recorded."""
        while call not in self.calls:
            await self._changed.wait()


def bank_handler(
    *, program: Any = None, gate: TenantGate | None = None, raising: bool = False
) -> CommandHandler:
    """A handler of the bank rules over a fresh ``InMemoryEventStore``.

    ``raising``: decide raises a RuntimeError for commands of type ``Explode`` (an internal
    error, as a crashing program would cause)."""
    decide = bank.decide
    if raising:

        def decide(state: JsonObject, command: JsonObject) -> Any:
            if command["type"] == "Explode":
                raise RuntimeError("secret internal detail")
            return bank.decide(state, command)

    program = program or FunctionProgram(TYPE, decide, bank.apply)
    return CommandHandler(
        store=InMemoryEventStore(),
        types=StaticTypes({TYPE: AggregateTypeSpec(TYPE, program)}),
        gate=gate,
        settings=HandlerSettings(retry_backoff_s=0),
    )


@contextlib.asynccontextmanager
async def open_server(
    handler: CommandHandler | None = None, options: GrpcOptions | None = None, **kwargs: Any
) -> AsyncIterator[CommandServer]:
    """A started ``CommandServer`` on 127.0.0.1, port 0; drained on exit."""
    server = CommandServer(handler or bank_handler(), options or GrpcOptions(), **kwargs)
    await server.start()
    try:
        yield server
    finally:
        with anyio.CancelScope(shield=True):
            await server.drain(1.0)


def command(
    payload: JsonObject | str,
    *,
    aggregate_id: str = "",
    command_id: str = "",
    aggregate_type: str = TYPE,
    expected_version: int | None = None,
) -> pb.SubmitCommandRequest:
    """A ``SubmitCommandRequest``; ``payload`` as a dict (JSON-encoded) or raw text."""
    import json

    text = payload if isinstance(payload, str) else json.dumps(payload)
    request = pb.SubmitCommandRequest(
        command_id=command_id,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        payload_json=text,
    )
    if expected_version is not None:
        request.expected_version = expected_version
    return request


# --- clients ------------------------------------------------------------------------------


@dataclass
class Reply:
    """The outcome of a unary call, whichever client made it."""

    status: str  # "OK" or the gRPC status name
    message: str | None
    response: Any
    initial_metadata: dict[str, str]


@dataclass
class StreamReply:
    """The outcome of a ``SubmitCommands`` call."""

    status: str
    message: str | None
    results: list[pb.SubmitCommandResult]
    initial_metadata: dict[str, str]


class GrpclibClient:
    """grpclib's client over one channel."""

    kind = "grpclib"

    def __init__(self, host: str, port: int) -> None:
        self.channel = Channel(host, port)
        self.stub = aggregate_grpc.CommandServiceStub(self.channel)
        self.queries = query_grpc.QueryServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    async def _unary(
        self, method: Any, request: Any, metadata: dict[str, str], grpc_timeout: float = TIMEOUT
    ) -> Reply:
        initial: dict[str, str] = {}
        try:
            async with method.open(metadata=metadata, timeout=grpc_timeout) as stream:
                await stream.send_message(request, end=True)
                await stream.recv_initial_metadata()
                initial = _text(stream.initial_metadata.items())
                response = await stream.recv_message()
                await stream.recv_trailing_metadata()
        except GRPCError as exc:
            return Reply(exc.status.name, exc.message, None, initial)
        return Reply("OK", None, response, initial)

    async def submit(self, request: pb.SubmitCommandRequest, metadata: dict[str, str]) -> Reply:
        return await self._unary(self.stub.SubmitCommand, request, metadata)

    async def get(self, request: pb.GetAggregateRequest, metadata: dict[str, str]) -> Reply:
        return await self._unary(self.stub.GetAggregate, request, metadata)

    async def query(
        self,
        request: qpb.QueryAggregatesRequest,
        metadata: dict[str, str],
        *,
        grpc_timeout: float = TIMEOUT,
    ) -> Reply:
        return await self._unary(self.queries.QueryAggregates, request, metadata, grpc_timeout)

    async def watch(self, request: qpb.WatchAggregatesRequest, metadata: dict[str, str]) -> Reply:
        """The status of a watch that the server ends at once (the first change, if any)."""
        return await self._unary(self.queries.WatchAggregates, request, metadata)

    async def submit_many(
        self, requests: Sequence[pb.SubmitCommandRequest], metadata: dict[str, str]
    ) -> StreamReply:
        initial: dict[str, str] = {}
        results: list[pb.SubmitCommandResult] = []
        try:
            async with self.stub.SubmitCommands.open(metadata=metadata, timeout=TIMEOUT) as stream:
                await stream.send_request()
                for request in requests:
                    await stream.send_message(request)
                await stream.end()
                await stream.recv_initial_metadata()
                initial = _text(stream.initial_metadata.items())
                async for result in stream:
                    results.append(result)
        except GRPCError as exc:
            return StreamReply(exc.status.name, exc.message, results, initial)
        return StreamReply("OK", None, results, initial)


class GrpcioClient:
    """grpcio's synchronous client, each call in a worker thread."""

    kind = "grpcio"

    def __init__(self, host: str, port: int) -> None:
        self.channel = grpc.insecure_channel(
            f"{host}:{port}", options=[("grpc.enable_http_proxy", 0)]
        )
        self.stub = grpcio_stubs().CommandServiceStub(self.channel)
        self.queries = grpcio_query_stubs().QueryServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def _unary_sync(
        self, method: Any, request: Any, metadata: dict[str, str], grpc_timeout: float = TIMEOUT
    ) -> Reply:
        try:
            response, call = method.with_call(
                request, metadata=tuple(metadata.items()), timeout=grpc_timeout
            )
        except grpc.RpcError as exc:
            return Reply(
                exc.code().name,  # type: ignore[attr-defined]
                exc.details(),  # type: ignore[attr-defined]
                None,
                _text(exc.initial_metadata() or ()),  # type: ignore[attr-defined]
            )
        return Reply("OK", None, response, _text(call.initial_metadata() or ()))

    async def submit(self, request: pb.SubmitCommandRequest, metadata: dict[str, str]) -> Reply:
        return await anyio.to_thread.run_sync(
            self._unary_sync, self.stub.SubmitCommand, request, metadata
        )

    async def get(self, request: pb.GetAggregateRequest, metadata: dict[str, str]) -> Reply:
        return await anyio.to_thread.run_sync(
            self._unary_sync, self.stub.GetAggregate, request, metadata
        )

    async def query(
        self,
        request: qpb.QueryAggregatesRequest,
        metadata: dict[str, str],
        *,
        grpc_timeout: float = TIMEOUT,
    ) -> Reply:
        return await anyio.to_thread.run_sync(
            self._unary_sync, self.queries.QueryAggregates, request, metadata, grpc_timeout
        )

    def _first_change_sync(
        self, request: qpb.WatchAggregatesRequest, metadata: dict[str, str]
    ) -> Reply:
        call = self.queries.WatchAggregates(
            request, metadata=tuple(metadata.items()), timeout=TIMEOUT
        )
        first = None
        with contextlib.suppress(grpc.RpcError, StopIteration):
            first = next(call)
        status = call.code().name
        message = call.details() if status != "OK" else None
        return Reply(status, message, first, _text(call.initial_metadata() or ()))

    async def watch(self, request: qpb.WatchAggregatesRequest, metadata: dict[str, str]) -> Reply:
        """The status of a watch that the server ends at once (the first change, if any)."""
        return await anyio.to_thread.run_sync(self._first_change_sync, request, metadata)

    def _stream_sync(
        self, requests: Sequence[pb.SubmitCommandRequest], metadata: dict[str, str]
    ) -> StreamReply:
        call = self.stub.SubmitCommands(
            iter(list(requests)), metadata=tuple(metadata.items()), timeout=TIMEOUT
        )
        results: list[pb.SubmitCommandResult] = []
        with contextlib.suppress(grpc.RpcError):  # the status is read from the call below
            results.extend(call)
        status = call.code().name
        message = call.details() if status != "OK" else None
        return StreamReply(status, message, results, _text(call.initial_metadata() or ()))

    async def submit_many(
        self, requests: Sequence[pb.SubmitCommandRequest], metadata: dict[str, str]
    ) -> StreamReply:
        return await anyio.to_thread.run_sync(self._stream_sync, requests, metadata)


Client = GrpclibClient | GrpcioClient
CLIENT_KINDS = ("grpclib", "grpcio")


@contextlib.contextmanager
def open_client(kind: str, address: tuple[str, int]) -> Iterator[Client]:
    """A client of ``kind`` (``grpclib`` or ``grpcio``) for a server; closed on exit."""
    client: Client = GrpclibClient(*address) if kind == "grpclib" else GrpcioClient(*address)
    try:
        yield client
    finally:
        client.close()


def _text(items: Any) -> dict[str, str]:
    return {str(k): v for k, v in items if isinstance(v, str)}


def grpcio_stubs() -> ModuleType:
    """grpcio's ``CommandService`` stubs for protos/, generated into a temporary directory."""
    return _grpcio_stubs(PROTO)


def grpcio_query_stubs() -> ModuleType:
    """grpcio's ``QueryService`` stubs, like ``grpcio_stubs``."""
    return _grpcio_stubs(QUERY_PROTO)


@functools.cache
def _grpcio_stubs(proto: str) -> ModuleType:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{ROOT / 'protos'}",
                f"--grpc_python_out={out}",
                proto,
            ],
            check=True,
            cwd=ROOT,
        )
        name = Path(proto).stem + "_pb2_grpc"
        path = Path(out, proto).with_name(f"{name}.py")
        spec = importlib.util.spec_from_file_location(f"{name}_test_only", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module
