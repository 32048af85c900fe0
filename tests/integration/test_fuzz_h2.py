"""Fuzz: raw HTTP/2 against a real service: metadata bytes gRPC metadata may not hold,
gRPC framing and headers, raw request bytes, junk connections.

Every bad call travels on one connection with ten good calls in flight beside it
(``fuzz_wire.on_shared_connection``): its own answer must be a clear status, and the ten
good calls must all be answered OK. A junk connection must be closed by the server while
good calls on another connection go on. After each class the node must be up, its memory
bounded, its log free of errors and its stream well-formed (``FuzzNode.check``).
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given

from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.fuzz_framing import (
    framing_cases,
    header_cases,
    issue_framing_cases,
    issue_header_cases,
    raw_body_cases,
)
from tests.integration.fuzz_h2 import Call, RawH2Connection, grpc_frame, request_headers
from tests.integration.fuzz_support import (
    TOO_BIG,
    FuzzNode,
    check_status,
    ci_budget,
    fuzz_node,
    slow_budget,
    with_examples,
)
from tests.integration.fuzz_wire import (
    HUGE_PREFIX,
    WireCase,
    good_body,
    issue_metadata_cases,
    junk_connection_bytes,
    metadata_cases,
    on_shared_connection,
    outcome_status,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from hypothesis.strategies import SearchStrategy

pytestmark = pytest.mark.integration

METADATA, FRAMING, HEADERS, RAW, JUNK = (
    "metadata bytes (raw h2)",
    "gRPC framing (raw h2)",
    "gRPC headers (raw h2)",
    "raw request bytes (raw h2)",
    "junk connections",
)
JUNK_CLOSE_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzNode]:
    with fuzz_node("grpc-wire", tmp_path_factory) as fuzzed:
        yield fuzzed


def fuzz_shared(node: FuzzNode, input_class: str, budget: Callable[[Any], Any]) -> None:
    cases, _, _, examples = CLASSES[input_class]

    @budget
    @given(cases)
    def run(case: WireCase) -> None:
        on_shared_connection(node, input_class, case)

    node.start_class()
    with_examples(run, examples)()
    node.check(input_class)


# input class -> (strategy, CI examples, slow examples, explicit examples)
CLASSES: dict[str, tuple[SearchStrategy[WireCase], int, int, list[WireCase]]] = {
    METADATA: (metadata_cases(), 30, 450, issue_metadata_cases()),
    FRAMING: (framing_cases(), 30, 350, issue_framing_cases()),
    HEADERS: (header_cases(), 20, 200, issue_header_cases()),
    RAW: (raw_body_cases(), 20, 200, []),
}


@pytest.mark.parametrize("input_class", list(CLASSES))
def test_bad_call_on_a_shared_connection(node: FuzzNode, input_class: str) -> None:
    fuzz_shared(node, input_class, ci_budget(CLASSES[input_class][1]))


@pytest.mark.slow
@pytest.mark.parametrize("input_class", list(CLASSES))
def test_bad_call_on_a_shared_connection_large_budget(node: FuzzNode, input_class: str) -> None:
    fuzz_shared(node, input_class, slow_budget(CLASSES[input_class][2]))


@pytest.mark.parametrize("prefix", [HUGE_PREFIX, 0xFFFFFFFF])
def test_an_oversized_length_prefix_is_refused_before_the_message_arrives(
    node: FuzzNode, prefix: int
) -> None:
    """The client announces a huge message, sends 1 KiB of it and waits: the server must
    refuse from the prefix (RESOURCE_EXHAUSTED naming the limit) without waiting for, or
    buffering, the rest."""
    node.start_class()
    case = WireCase(
        f"open stream announcing {prefix} bytes",
        tuple(request_headers("127.0.0.1:1")),
        grpc_frame(b"\x0a" * 1024, length=prefix),
        TOO_BIG,
        names_limit=True,
        open_stream=True,
    )
    on_shared_connection(node, "oversized length prefix (raw h2)", case, timeout=5.0)
    node.check("oversized length prefix (raw h2)")


def junk_connection(node: FuzzNode, label: str, junk: bytes) -> None:
    """Junk on its own connection while ten good calls are in flight on another: the
    server closes the junk connection (after the peer's end of input at the latest), the
    good calls are all answered OK."""
    with RawH2Connection(node.grpc) as good:
        ids = [good.start(Call(request_headers(good.authority), good_body())) for _ in range(10)]
        with socket.create_connection(node.grpc, timeout=JUNK_CLOSE_TIMEOUT) as sock:
            try:
                sock.sendall(junk)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server already closed it
            closed = _closed_within(sock, JUNK_CLOSE_TIMEOUT)
        good.collect(ids)
        outcomes = [good.streams[i] for i in ids]
    for outcome in outcomes:
        if outcome.grpc_status == "OK":
            for message in outcome.messages():
                node.remember(pb.SubmitCommandResponse.FromString(message).aggregate_id)
    check_status(JUNK, label, "CLOSED" if closed else "LEFT OPEN", "", {"CLOSED"})
    for index, outcome in enumerate(outcomes):
        check_status(
            f"{JUNK}: 10 good calls beside",
            f"good call {index} beside {label}",
            outcome_status(outcome),
            outcome.grpc_message,
            {"OK"},
        )


def _closed_within(sock: socket.socket, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True  # reset by the server
    return False


def test_junk_connections(node: FuzzNode) -> None:
    @ci_budget(15)
    @given(junk_connection_bytes())
    def run(junk: tuple[str, bytes]) -> None:
        junk_connection(node, *junk)

    node.start_class()
    run()
    node.check(JUNK)


@pytest.mark.slow
def test_junk_connections_large_budget(node: FuzzNode) -> None:
    @slow_budget(150)
    @given(junk_connection_bytes())
    def run(junk: tuple[str, bytes]) -> None:
        junk_connection(node, *junk)

    node.start_class()
    run()
    node.check(JUNK)


def test_good_calls_answer_on_raw_h2(node: FuzzNode) -> None:
    """The harness itself: eleven good calls on one connection are all answered OK (so a
    failure above is the bad call's doing, not the raw client's)."""
    case = WireCase(
        "a good call", tuple(request_headers("127.0.0.1:1")), good_body(), frozenset({"OK"})
    )
    bad = on_shared_connection(node, "control: good calls (raw h2)", case)
    assert bad.grpc_status == "OK"
