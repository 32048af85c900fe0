"""The gRPC server's transport under hostile input, over real sockets: raw HTTP/2 frames (h2)
for what no gRPC client sends, grpclib's and grpcio's clients for the rest.

Every bad call gets a status the gRPC spec (or grpc-go) gives it, never UNKNOWN; the other
calls multiplexed on its connection go on; the server holds no more than its limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import grpc
import h2.events
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from aggregate.adapters.grpc import GrpcOptions
from aggregate.adapters.grpc.transport import HEADER_BLOCK_HARD_LIMIT
from aggregate.domain.context import valid_traceparent
from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.grpc_harness import (
    CLIENT_KINDS,
    OPEN,
    GatedProgram,
    GrpclibClient,
    bank_handler,
    command,
    grpcio_stubs,
    open_client,
    open_server,
)
from tests.integration.raw_h2 import (
    SUBMIT,
    SUBMIT_MANY,
    RawH2Client,
    RawHeaders,
    RawResponse,
    StreamGoneError,
    frame,
    grpc_headers,
)
from tests.integration.service_harness import running_service

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aggregate.adapters.grpc import CommandServer

pytestmark = pytest.mark.anyio
ACME = (b"x-tenant-id", b"acme")
GOOD_CALLS = 10
MiB = 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def program() -> GatedProgram:
    return GatedProgram()


@pytest.fixture
async def server(program: GatedProgram) -> AsyncIterator[CommandServer]:
    async with open_server(bank_handler(program=program)) as srv:
        yield srv


def request_bytes(payload: dict[str, Any] = OPEN) -> bytes:
    return command(payload).SerializeToString()


def opened(response: RawResponse) -> pb.SubmitCommandResponse:
    """The ``SubmitCommandResponse`` of a successful raw call."""
    assert response.status == "OK", (response.status, response.message)
    [message] = response.messages()
    return pb.SubmitCommandResponse.FromString(message)


# --- one bad call on a shared connection -----------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A bad call: its headers, its body, and what the server must answer."""

    headers: RawHeaders
    body: bytes | None = None  # None: the HEADERS frame ends the stream
    status: str = "OK"
    message: str = ""  # a fragment of grpc-message
    accept_encoding: bool = False  # the answer must carry grpc-accept-encoding: identity


def bad(*metadata: tuple[bytes, bytes], body: bytes | None = None, **expect: Any) -> Bad:
    """A call with the usual headers plus ``metadata``; ``body`` defaults to one message."""
    headers = grpc_headers(SUBMIT, [ACME, *metadata])
    return Bad(headers, frame(MESSAGE) if body is None else body, **expect)


def without(name: bytes) -> RawHeaders:
    return [(k, v) for k, v in grpc_headers(SUBMIT, [ACME]) if k != name]


def replaced(name: bytes, value: bytes) -> RawHeaders:
    return [(k, value if k == name else v) for k, v in grpc_headers(SUBMIT, [ACME])]


MESSAGE = request_bytes()
BAD_CALLS = {
    # header bytes above 0x7F: h2 raised UnicodeDecodeError and closed the connection
    "tenant é": Bad(
        grpc_headers(SUBMIT, [(b"x-tenant-id", "é".encode())]),
        frame(MESSAGE),
        "INVALID_ARGUMENT",
        "tenant",
    ),
    "correlation id \\xff": bad((b"x-correlation-id", b"abc\xff"), body=frame(MESSAGE)),
    "utf-8 traceparent": bad((b"traceparent", "00-é-01".encode()), body=frame(MESSAGE)),
    "latin-1 name": bad(("x-na\xefve".encode("latin-1"), b"1"), body=frame(MESSAGE)),
    ":path \\xff": Bad(grpc_headers(b"/\xff/x", [ACME]), frame(MESSAGE), "UNIMPLEMENTED"),
    # request headers grpclib answered UNKNOWN, without a status, or never
    "grpc-timeout abc": bad((b"grpc-timeout", b"abc"), status="INTERNAL", message="grpc-timeout"),
    "grpc-timeout 9 digits": bad(
        (b"grpc-timeout", b"123456789S"), status="INTERNAL", message="1-8 digits"
    ),
    "grpc-timeout 0n": bad(
        (b"grpc-timeout", b"0n"), status="DEADLINE_EXCEEDED", message="less than 1 ms"
    ),
    "no :method": Bad(without(b":method"), frame(MESSAGE), "INTERNAL", "must be POST"),
    "GET": Bad(replaced(b":method", b"GET"), None, "INTERNAL", "must be POST"),
    "no :path": Bad(without(b":path"), frame(MESSAGE), "UNIMPLEMENTED", ":path"),
    "no content-type": Bad(without(b"content-type"), frame(MESSAGE), "INTERNAL", "content-type"),
    "text/plain": Bad(
        replaced(b"content-type", b"text/plain"), frame(MESSAGE), "INTERNAL", "content-type"
    ),
    "no te": Bad(without(b"te"), frame(MESSAGE), "INTERNAL", "te: trailers"),
    "-bin not base64": bad(
        (b"x-blob-bin", b"abcde"), status="INVALID_ARGUMENT", message="binary metadata"
    ),
    "-bin not ascii": bad(
        (b"x-blob-bin", b"\xff\xfe"), status="INVALID_ARGUMENT", message="binary metadata"
    ),
    "20 KiB of metadata": bad(
        (b"x-big", b"a" * 20_000), status="RESOURCE_EXHAUSTED", message="16384 bytes"
    ),
    "20 KiB in one repeated name": bad(
        *[(b"x-same", b"s" * 200)] * 100, status="RESOURCE_EXHAUSTED", message="16384 bytes"
    ),
    "second grpc-timeout abc": bad(
        (b"grpc-timeout", b"5S"),
        (b"grpc-timeout", b"abc"),
        status="INTERNAL",
        message="grpc-timeout 'abc'",
    ),
    # message framing grpclib answered UNKNOWN "Internal Server Error"
    "compressed": bad(
        body=frame(MESSAGE, flag=1),
        status="UNIMPLEMENTED",
        message="compressed",
        accept_encoding=True,
    ),
    "compressed gzip": bad(
        (b"grpc-encoding", b"gzip"),
        body=frame(MESSAGE, flag=1),
        status="UNIMPLEMENTED",
        message="'gzip'",
        accept_encoding=True,
    ),
    "compressed unknown encoding": bad(
        (b"grpc-encoding", b"x-squash"),
        body=frame(MESSAGE, flag=1),
        status="UNIMPLEMENTED",
        message="'x-squash'",
        accept_encoding=True,
    ),
    "flag 7": bad(body=frame(MESSAGE, flag=7), status="INTERNAL", message="flag is 7"),
    "flag 255": bad(body=frame(MESSAGE, flag=255), status="INTERNAL", message="flag is 255"),
    "length over the data": bad(
        body=frame(MESSAGE, length=len(MESSAGE) + 10),
        status="INTERNAL",
        message="ended inside a message",
    ),
    "partial prefix": bad(body=b"\x00\x00\x01", status="INTERNAL", message="message's prefix"),
    "4 GiB length": bad(
        body=frame(MESSAGE, length=2**32 - 1),
        status="RESOURCE_EXHAUSTED",
        message="4194304 bytes",
    ),
}


@pytest.mark.parametrize("case", BAD_CALLS.values(), ids=BAD_CALLS.keys())
async def test_a_bad_call_leaves_the_calls_on_its_connection_unharmed(
    server: CommandServer, program: GatedProgram, case: Bad, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with anyio.fail_after(30):
        async with RawH2Client.connect(server.address) as h2c:
            good = []
            for _ in range(GOOD_CALLS):
                stream_id = h2c.request(grpc_headers(SUBMIT, [ACME]))
                await h2c.send(stream_id, frame(request_bytes({**OPEN, "hold": True})), end=True)
                good.append(stream_id)
            await program.wait_entered(GOOD_CALLS)

            caplog.clear()
            stream_id = h2c.request(case.headers, end=case.body is None)
            if case.body is not None:
                await h2c.send(stream_id, case.body, end=True)
            answer = await h2c.response(stream_id)
            lines = list(caplog.records)

            assert (answer.status, case.message in answer.message) == (case.status, True), (
                answer.status,
                answer.message,
            )
            assert len(answer.message) < 300
            if case.accept_encoding:
                assert answer.header("grpc-accept-encoding") == "identity"
            assert len(lines) <= 1, [r.getMessage() for r in lines]
            assert not [r for r in lines if r.levelno >= logging.WARNING or r.exc_info]

            program.release.set()
            results = [opened(await h2c.response(s)) for s in good]
            assert [r.version for r in results] == [1] * GOOD_CALLS
            assert h2c.terminated is None


async def test_invalid_context_values_are_replaced_and_never_echoed(
    server: CommandServer,
) -> None:
    """Per the gRPC spec, a value outside printable ASCII is accepted or dropped, never an
    error: the service replaces an invalid correlation id or traceparent, as it does for any
    other invalid value, and echoes only what it made."""
    with anyio.fail_after(10):
        async with RawH2Client.connect(server.address) as h2c:
            sent = [(b"x-correlation-id", b"abc\xff"), (b"traceparent", "00-é-01".encode())]
            stream_id = h2c.request(grpc_headers(SUBMIT, [ACME, *sent]))
            await h2c.send(stream_id, frame(MESSAGE), end=True)
            answer = await h2c.response(stream_id)
    assert opened(answer).version == 1
    correlation = answer.header("x-correlation-id")
    assert correlation is not None
    assert uuid.UUID(correlation).version == 4
    assert valid_traceparent(answer.header("traceparent"))


# --- framing that must keep working ----------------------------------------------------------


async def test_empty_data_frames_between_messages_are_ignored(server: CommandServer) -> None:
    first, second = request_bytes(), request_bytes({**OPEN, "owner": "bob"})
    with anyio.fail_after(10):
        async with RawH2Client.connect(server.address) as h2c:
            stream_id = h2c.request(grpc_headers(SUBMIT_MANY, [ACME]))
            await h2c.send(stream_id, frame(first))
            await h2c.send(stream_id, b"")
            await h2c.send(stream_id, frame(second)[:3])
            await h2c.send(stream_id, b"")
            await h2c.send(stream_id, frame(second)[3:], end=True)
            answer = await h2c.response(stream_id)
    assert (answer.status, answer.message) == ("OK", "")
    results = [pb.SubmitCommandResult.FromString(m) for m in answer.messages()]
    assert [r.response.events[0].payload_json for r in results] == [
        json.dumps({"owner": "ann"}, separators=(",", ":")),
        json.dumps({"owner": "bob"}, separators=(",", ":")),
    ]


async def test_a_stream_that_breaks_framing_still_answers_what_came_before(
    server: CommandServer,
) -> None:
    with anyio.fail_after(10):
        async with RawH2Client.connect(server.address) as h2c:
            stream_id = h2c.request(grpc_headers(SUBMIT_MANY, [ACME]))
            await h2c.send(stream_id, frame(MESSAGE) + frame(MESSAGE, flag=9), end=True)
            answer = await h2c.response(stream_id)
    assert (answer.status, "flag is 9" in answer.message) == ("INTERNAL", True)
    [result] = [pb.SubmitCommandResult.FromString(m) for m in answer.messages()]
    assert result.response.version == 1


# --- limits, through real clients ------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_a_message_over_the_limit_is_refused_naming_it(kind: str) -> None:
    options = GrpcOptions(max_message_bytes=64 * 1024, max_payload_bytes=1024 * 1024)
    payload = json.dumps({**OPEN, "note": "x" * 100_000})
    async with open_server(options=options) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(20):
            too_big = await client.submit(command(payload), {"x-tenant-id": "acme"})
            fine = await client.submit(command(OPEN), {"x-tenant-id": "acme"})
    assert too_big.status == "RESOURCE_EXHAUSTED"
    assert "65536 bytes, max_message_bytes" in (too_big.message or "")
    assert fine.status == "OK"


@pytest.mark.parametrize("kind", CLIENT_KINDS)
async def test_oversized_metadata_fails_only_its_own_call(kind: str, program: GatedProgram) -> None:
    """grpcio sends a header list whatever the server's SETTINGS say; it must cost only its
    own call, not the connection every other call of the channel shares."""
    async with open_server(bank_handler(program=program)) as srv:
        with open_client(kind, srv.address) as client, anyio.fail_after(30):
            replies: list[Any] = []

            async def held() -> None:
                replies.append(
                    await client.submit(command({**OPEN, "hold": True}), {"x-tenant-id": "acme"})
                )

            async with anyio.create_task_group() as tg:
                for _ in range(GOOD_CALLS):
                    tg.start_soon(held)
                await program.wait_entered(GOOD_CALLS)
                big = {"x-tenant-id": "acme", "x-big": "b" * 100_000}
                refused = await client.submit(command(OPEN), big)
                program.release.set()
    assert refused.status == "RESOURCE_EXHAUSTED"
    assert "16384 bytes, grpc_max_header_list_bytes" in (refused.message or "")
    assert [r.status for r in replies] == ["OK"] * GOOD_CALLS


async def test_compressed_requests_from_grpcio_are_unimplemented(server: CommandServer) -> None:
    host, port = server.address
    channel = grpc.insecure_channel(f"{host}:{port}", options=[("grpc.enable_http_proxy", 0)])
    stub = grpcio_stubs().CommandServiceStub(channel)

    def call() -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitCommand(
                command({**OPEN, "note": "x" * 5000}),  # grpcio sends it compressed if smaller
                metadata=(("x-tenant-id", "acme"),),
                compression=grpc.Compression.Gzip,
                timeout=10,
            )
        return info.value

    try:
        error = await anyio.to_thread.run_sync(call)
    finally:
        channel.close()
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    assert "'gzip'" in error.details()  # type: ignore[attr-defined]


async def test_concurrent_streams_are_bounded_per_connection(program: GatedProgram) -> None:
    options = GrpcOptions(max_concurrent_streams=4)
    async with open_server(bank_handler(program=program), options) as srv:
        with anyio.fail_after(20):
            async with RawH2Client.connect(srv.address) as h2c:
                await h2c.wait_for(lambda: h2c.h2.remote_settings.max_concurrent_streams == 4)
                header_list = h2c.h2.remote_settings.get(SettingCodes.MAX_HEADER_LIST_SIZE)
            with open_client("grpclib", srv.address) as client:
                replies: list[Any] = []

                async def held() -> None:
                    replies.append(
                        await client.submit(
                            command({**OPEN, "hold": True}), {"x-tenant-id": "acme"}
                        )
                    )

                async with anyio.create_task_group() as tg:
                    for _ in range(GOOD_CALLS):
                        tg.start_soon(held)
                    await program.wait_entered(4)
                    entered_at_once = program.holding
                    program.release.set()
    assert header_list == HEADER_BLOCK_HARD_LIMIT
    assert entered_at_once == 4
    assert program.max_holding == 4
    assert [r.status for r in replies] == ["OK"] * GOOD_CALLS


async def test_a_header_block_over_the_hard_limit_closes_with_goaway(
    server: CommandServer, caplog: pytest.LogCaptureFixture
) -> None:
    """HPACK state cannot be kept past the decoder's bound: the connection goes, but says so
    (GOAWAY), and the log has one line, no traceback."""
    caplog.set_level(logging.INFO)
    entry = (b"x-pad", b"p" * 4000)  # indexed once, then 1-2 bytes per repeat
    repeats = HEADER_BLOCK_HARD_LIMIT // 4000 + 2
    with anyio.fail_after(20):
        async with RawH2Client.connect(server.address) as h2c:
            await h2c.settings_acknowledged.wait()
            h2c.request(grpc_headers(SUBMIT, [ACME, *[entry] * repeats]), end=True)
            await h2c.wait_closed()
    assert h2c.terminated is not None
    assert h2c.terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    lines = [r for r in caplog.records if r.name.startswith(("aggregate", "grpclib", "asyncio"))]
    assert [r.getMessage()[:30] for r in lines if "HTTP/2" in r.getMessage()] == [
        "closed an HTTP/2 connection fr"
    ]
    assert not [r for r in lines if r.levelno >= logging.WARNING or r.exc_info]


# --- memory, measured on the service process -------------------------------------------------


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, KiB, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


async def test_a_huge_announced_message_is_refused_before_it_is_buffered(
    tmp_path: Path,
) -> None:
    """A request announcing 1 GiB that streams up to 300 MB: the service refuses it from the
    prefix and never holds more than its limit (measured: VmRSS and peak VmHWM)."""
    chunk = b"\0" * MiB
    with running_service(tmp_path) as service:
        before = memory_kib(service.proc.pid)
        sent = 0
        with anyio.fail_after(120):
            async with RawH2Client.connect(service.grpc) as h2c:
                stream_id = h2c.request(grpc_headers(SUBMIT, [ACME]))
                try:
                    await h2c.send(stream_id, frame(b"", length=2**30))
                    while sent < 300 * MiB:
                        await h2c.send(stream_id, chunk)
                        sent += len(chunk)
                except StreamGoneError:
                    pass  # the refusal
                answer = await h2c.response(stream_id) if sent < 300 * MiB else None
                after = memory_kib(service.proc.pid)
    assert answer is not None, f"the service took all {sent} bytes"
    assert answer.status == "RESOURCE_EXHAUSTED"
    assert "1073741824 bytes" in answer.message
    assert sent <= 16 * MiB  # what flow control let out before the refusal arrived
    growth = {name: (after[name] - before[name]) // 1024 for name in after}
    assert growth["VmRSS"] < 100, growth
    assert growth["VmHWM"] < 100, growth


async def test_a_client_that_sends_pings_without_reading_is_not_read(
    server: CommandServer,
) -> None:
    """h2 answers every PING by itself: a client that never reads must not make the server
    buffer the answers without bound; once it reads again, its connection works."""
    cap = 24 * MiB
    for listening in server.server._server.sockets:  # type: ignore[union-attr]
        # small kernel buffers on both ends keep what TCP itself holds (and the test) short
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.connect(server.address)
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    sock.sendall(client.data_to_send())
    sock.setblocking(False)
    pings = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingpong"  # a PING frame
    pending, sent, stopped_reading = memoryview(pings * 4096), 0, False
    try:
        with anyio.fail_after(120):
            while sent < cap and not stopped_reading:
                try:
                    count = sock.send(pending)
                except BlockingIOError:
                    transports = [p.connection._transport for p in server._connections]
                    stopped_reading = bool(transports) and not transports[0].is_reading()
                else:
                    sent, pending = sent + count, pending[count:] or memoryview(pings * 4096)
                await anyio.lowlevel.checkpoint()  # the server runs on this loop
            buffered = [
                p.connection._transport.get_write_buffer_size() for p in server._connections
            ]

            # reading again: the rest of the PINGs are answered, then a call on the connection
            ended = False
            stream_id = client.get_next_available_stream_id()
            client.send_headers(stream_id, grpc_headers(SUBMIT, [ACME]))
            client.send_data(stream_id, frame(MESSAGE), end_stream=True)
            out = bytes(pending) + client.data_to_send()
            answer = RawResponse()
            while not ended:
                with contextlib.suppress(BlockingIOError):
                    out = out[sock.send(out) :] if out else out
                with contextlib.suppress(BlockingIOError):
                    data = sock.recv(1 << 20)
                    assert data, "the server closed the connection"
                    for event in client.receive_data(data):
                        if isinstance(event, h2.events.ResponseReceived):
                            answer.headers = list(event.headers or ())
                        elif isinstance(event, h2.events.TrailersReceived):
                            answer.trailers = list(event.headers or ())
                        elif isinstance(event, h2.events.DataReceived):
                            answer.data += event.data or b""
                        ended = ended or isinstance(event, h2.events.StreamEnded)
                    out += client.data_to_send()
                await anyio.lowlevel.checkpoint()
    finally:
        sock.close()
    assert stopped_reading, f"the server read all {sent} bytes"
    assert sent < cap
    assert max(buffered) < MiB, buffered
    assert opened(answer).version == 1


# --- flow control: a stream the server does not read holds up no other call -----------------

STALLED_STREAMS = 2
BIG_COMMAND = command({**OPEN, "note": "x" * 32_000})


class _WindowWait(asyncio.Event):
    """A grpclib client stream's ``window_updated`` event that tells ``blocked`` when the
    stream's sends begin to wait for flow-control window (grpclib clears the event, then
    waits on it, when its stream's or its connection's window is spent)."""

    def __init__(self, original: asyncio.Event, blocked: anyio.Event) -> None:
        super().__init__()
        if original.is_set():
            self.set()
        self._blocked = blocked

    def clear(self) -> None:
        super().clear()
        self._blocked.set()


async def test_streams_the_server_does_not_read_leave_the_connection_to_other_calls(
    program: GatedProgram,
) -> None:
    """Two ``SubmitCommands`` streams fill their windows of commands (held in ``decide``),
    so the server stops reading them, and their client keeps sending large commands; a
    unary call of another tenant on the same connection is still answered. With one
    connection window for all (grpclib's 4 MiB each, stream and connection) the stalled
    streams took all of it and the call waited until they were read again."""
    window = GrpcOptions().stream_window
    async with open_server(bank_handler(program=program)) as srv:
        client = GrpclibClient(*srv.address)
        blocked = [anyio.Event() for _ in range(STALLED_STREAMS)]
        try:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:

                    async def stalled(waits: anyio.Event) -> None:
                        method = client.stub.SubmitCommands
                        async with method.open(metadata={"x-tenant-id": "acme"}) as stream:
                            await stream.send_request()
                            for _ in range(window):
                                held = command(
                                    {**OPEN, "hold": True}, aggregate_id=str(uuid.uuid4())
                                )
                                await stream.send_message(held)
                            sending = stream._stream
                            sending.window_updated = _WindowWait(sending.window_updated, waits)
                            for _ in range(200):  # 6.4 MB: more than any window
                                await stream.send_message(BIG_COMMAND)

                    for waits in blocked:
                        tg.start_soon(stalled, waits)
                    await program.wait_entered(STALLED_STREAMS * window)
                    for waits in blocked:  # both streams' sends wait for window
                        await waits.wait()
                    calm = await client.submit(command(OPEN), {"x-tenant-id": "globex"})
                    tg.cancel_scope.cancel()
        finally:
            client.close()
            program.release.set()
    assert calm.status == "OK"
