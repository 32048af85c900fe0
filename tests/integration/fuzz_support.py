"""What the fuzz suite (``test_fuzz_*.py``) shares: the node under test, the per-class tally,
the oracle's checks and small synchronous grpcio calls.

Each fuzz module starts one real service (``aggregate serve --example bank``, embedded
nats-server) through ``service_harness`` and wraps it in a ``FuzzNode``, which after every
input class checks that the node is still up (``/health``), that its resident memory stays
within a bound of what it was before the first hostile request (``/proc/<pid>/status``),
that no error-level line reached its log (a traceback per hostile request would let any
client fill the log), and that every subject in the event stream is
``tenant.<valid>.aggregate.<type>.<canonical id>`` with an id some client sent in canonical
form or the server made.

The tally counts, per input class, the statuses the server answered; the summary is printed
at the end of the session (``pytest_terminal_summary`` in ``conftest.py``) and written to
``fuzz-tally.json`` under pytest's base temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import nats
from hypothesis import example, settings

from aggregate.domain.ids import TOKEN_PATTERN
from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.grpc_harness import grpcio_stubs
from tests.integration.service_harness import ServiceProcess, running_service

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

STREAM = "AGGREGATE_EVENTS"
BANK = "bank-account"
GOOD_TENANT = "fuzz-good"
CALL_TIMEOUT = 15.0

MAX_STATUS_MESSAGE_BYTES = 2048
"""A status message quotes at most a short prefix of what the client sent (and a
program's rejection reason is capped): anything longer is echoing."""
RSS_GROWTH_BOUND_KIB = 160 * 1024
"""How much the service's resident memory may grow over a module (current and peak), from
its size after warm-up; refusing oversized requests before buffering them keeps it far
below this."""

SERVER_PATHS = {str(Path(__file__).resolve().parents[2])}
"""Where the service under test runs from and keeps its files (storage, manifests): no
status message may show them (``forbid_path`` adds to them)."""


def forbid_path(path: Path) -> None:
    SERVER_PATHS.add(str(path))


CANONICAL_ID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
"""The one id form accepted: 8-4-4-4-12 hex digits, any case (RFC 9562)."""
_SUBJECT = re.compile(
    r"tenant\.(?P<tenant>[^.]+)\.aggregate\.(?P<type>[^.]+)\.(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-"
    r"[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
)

BUSINESS = frozenset({"OK", "FAILED_PRECONDITION", "ABORTED"})
"""What a well-formed command may get from the bank rules."""
INVALID = frozenset({"INVALID_ARGUMENT"})
TOO_BIG = frozenset({"RESOURCE_EXHAUSTED"})
GENERIC_MESSAGES = frozenset(
    {
        "",
        "Internal Server Error",
        "internal error; see the service log for this request's correlation id",
    }
)
"""Messages that name no reason: an INTERNAL with one of these is not an answer."""


def is_canonical_id(text: str) -> bool:
    return CANONICAL_ID.fullmatch(text) is not None


def is_valid_token(text: str) -> bool:
    return TOKEN_PATTERN.fullmatch(text) is not None


# --- budgets --------------------------------------------------------------------------------


def ci_budget(examples: int) -> settings:
    """Settings of a fuzz test at the CI budget: few examples, derandomized (the same
    inputs on every run, so CI is deterministic)."""
    return settings(settings.default, max_examples=examples, derandomize=True)


def slow_budget(examples: int) -> settings:
    """Settings of a fuzz test's ``-m slow`` twin: the ``slow`` profile, random inputs."""
    return settings(settings.get_profile("slow"), max_examples=examples)


def with_examples(test: Callable[..., None], examples: Iterable[Any]) -> Callable[..., None]:
    """``test`` (a ``@given`` test of one argument) also run on each of ``examples``."""
    for case in examples:
        test = example(case)(test)
    return test


# --- the tally ------------------------------------------------------------------------------


@dataclass
class Tally:
    """Statuses seen per input class, and each node's memory before and after."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)
    memory: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, input_class: str, status: str) -> None:
        self.counts.setdefault(input_class, Counter())[status] += 1

    def requests(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def lines(self) -> list[str]:
        out = [f"fuzz tally: {self.requests()} answers checked"]
        width = max((len(k) for k in self.counts), default=10)
        for name in sorted(self.counts):
            seen = ", ".join(f"{s} {n}" for s, n in self.counts[name].most_common())
            out.append(f"  {name:<{width}}  {sum(self.counts[name].values()):>6}  {seen}")
        for node, figures in sorted(self.memory.items()):
            out.append(
                f"  memory of {node}: VmRSS {figures['rss_before_kib']} -> "
                f"{figures['rss_after_kib']} KiB, VmHWM {figures['hwm_before_kib']} -> "
                f"{figures['hwm_after_kib']} KiB"
            )
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests(),
            "classes": {k: dict(v) for k, v in self.counts.items()},
            "memory": self.memory,
        }


TALLY = Tally()
TALLY_FILE = "fuzz-tally.json"


def write_tally(directory: Path) -> Path:
    path = directory / TALLY_FILE
    path.write_text(json.dumps(TALLY.as_json(), indent=2, sort_keys=True))
    return path


# --- the oracle -----------------------------------------------------------------------------


def check_status(
    input_class: str,
    what: str,
    status: str,
    message: str,
    allowed: Iterable[str],
    *,
    internal_needs_reason: bool = False,
    names_limit: bool = False,
    operator_facing: bool = False,
) -> None:
    """Tally one answer and check it against what the input deserves.

    ``allowed``: the statuses this input may get. UNKNOWN is never one. INTERNAL is only
    allowed where the protocol names it (malformed gRPC framing), and then only with a
    reason (``internal_needs_reason``), never with a generic message. ``names_limit``: the
    input is over a size limit, so a RESOURCE_EXHAUSTED must say which (a number).
    ``operator_facing``: the message is for the operator (a refused start-up, ``aggregate
    check``), who may be told the path of their own files; a client never is.
    """
    TALLY.add(input_class, status)
    allowed = frozenset(allowed)
    shown = f"{input_class}: {what}: got {status} {message[:200]!r}"
    assert status != "UNKNOWN", f"{shown}; UNKNOWN is never an answer"
    assert status in allowed, f"{shown}; expected {' or '.join(sorted(allowed))}"
    if status == "INTERNAL":
        assert internal_needs_reason, f"{shown}; the client's fault is never INTERNAL"
        assert message.strip() not in GENERIC_MESSAGES, f"{shown}; INTERNAL needs a reason"
    leaked = [] if operator_facing else [path for path in SERVER_PATHS if path in message]
    assert not leaked, f"{shown}; a status message never shows a server path"
    size = len(message.encode("utf-8", "surrogatepass"))
    assert size <= MAX_STATUS_MESSAGE_BYTES, (
        f"{shown}; a {size}-byte status message echoes unbounded input"
    )
    if status == "RESOURCE_EXHAUSTED" and names_limit:
        assert re.search(r"\d", message), f"{shown}; the refusal must name the limit"


# --- grpcio, synchronous ----------------------------------------------------------------------


@dataclass
class Answer:
    status: str
    message: str
    response: Any = None


CLIENT_REFUSED = "RESOURCE_EXHAUSTED from grpcio itself (the answer's metadata is over its limit)"


def _answer(status: str, message: str) -> Answer:
    # grpcio refuses an answer whose headers pass its limits (8 KiB soft, 16 KiB hard) and
    # reports RESOURCE_EXHAUSTED as if the server had said it: an echoing status message.
    if status == "RESOURCE_EXHAUSTED" and "received metadata size exceeds" in message:
        return Answer(CLIENT_REFUSED, message)
    return Answer(status, message)


class SyncClient:
    """grpcio with its default options (as a client built with no tuning would be)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.channel = grpc.insecure_channel(
            f"{address[0]}:{address[1]}", options=[("grpc.enable_http_proxy", 0)]
        )
        self.stub = grpcio_stubs().CommandServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Any, request: Any, metadata: Sequence[tuple[str, str]]) -> Answer:
        try:
            response = method(request, metadata=tuple(metadata), timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            return _answer(exc.code().name, exc.details() or "")
        return Answer("OK", "", response)

    def submit(
        self, request: pb.SubmitCommandRequest, metadata: Sequence[tuple[str, str]]
    ) -> Answer:
        return self._call(self.stub.SubmitCommand, request, metadata)

    def get(self, request: pb.GetAggregateRequest, metadata: Sequence[tuple[str, str]]) -> Answer:
        return self._call(self.stub.GetAggregate, request, metadata)

    def submit_many(
        self, requests: Sequence[pb.SubmitCommandRequest], metadata: Sequence[tuple[str, str]]
    ) -> tuple[Answer, list[pb.SubmitCommandResult]]:
        call = self.stub.SubmitCommands(
            iter(list(requests)), metadata=tuple(metadata), timeout=CALL_TIMEOUT
        )
        results: list[pb.SubmitCommandResult] = []
        with contextlib.suppress(grpc.RpcError):  # the status is read from the call below
            results.extend(call)
        return _answer(call.code().name, call.details() or ""), results


def open_account_request(owner: str = "fuzz", aggregate_id: str = "") -> pb.SubmitCommandRequest:
    return pb.SubmitCommandRequest(
        aggregate_type=BANK,
        aggregate_id=aggregate_id,
        command_id=str(uuid.uuid4()),
        payload_json=json.dumps({"type": "OpenAccount", "owner": owner}),
    )


# --- the node -------------------------------------------------------------------------------


def read_memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, KiB, from ``/proc/<pid>/status``."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


@dataclass
class FuzzNode:
    """A running service under fuzzing, and what the checks after each class need."""

    name: str
    service: ServiceProcess
    types: frozenset[str] = frozenset({BANK})
    known_ids: set[str] = field(default_factory=set)
    rss_before: int = 0
    hwm_before: int = 0

    @property
    def grpc(self) -> tuple[str, int]:
        return self.service.grpc

    def remember(self, aggregate_id: str) -> None:
        """An id a client sent in canonical form, or one the server made."""
        self.known_ids.add(aggregate_id.lower())

    def warm_up(self) -> None:
        """A few good commands, so caches and pools exist before memory is measured."""
        client = SyncClient(self.grpc)
        try:
            for _ in range(20):
                answer = client.submit(open_account_request(), [("x-tenant-id", GOOD_TENANT)])
                assert answer.status == "OK", answer
                self.remember(answer.response.aggregate_id)
        finally:
            client.close()
        self.rss_before, self.hwm_before = read_memory_kib(self.service.proc.pid)

    def start_class(self) -> None:
        """Forget the log lines so far: ``check`` then judges one input class's lines."""
        self.new_log_lines()

    def check(self, input_class: str, *, log_errors_allowed: bool = False) -> None:
        """After an input class: the node is up, memory bounded, the log free of errors,
        the stream holding only well-formed subjects."""
        assert self.service.proc.poll() is None, f"{input_class}: the service died"
        status, health = self.service.http_call("GET", "/health")
        assert (status, health.get("status")) == (200, "ok"), (input_class, status, health)
        rss, hwm = read_memory_kib(self.service.proc.pid)
        TALLY.memory[self.name] = {
            "rss_before_kib": self.rss_before,
            "rss_after_kib": rss,
            "hwm_before_kib": self.hwm_before,
            "hwm_after_kib": hwm,
        }
        assert rss - self.rss_before <= RSS_GROWTH_BOUND_KIB, (
            f"{input_class}: VmRSS grew {rss - self.rss_before} KiB (bound "
            f"{RSS_GROWTH_BOUND_KIB} KiB)"
        )
        assert hwm - self.hwm_before <= RSS_GROWTH_BOUND_KIB, (
            f"{input_class}: peak VmHWM grew {hwm - self.hwm_before} KiB (bound "
            f"{RSS_GROWTH_BOUND_KIB} KiB)"
        )
        if not log_errors_allowed:
            errors = [
                line for line in self.new_log_lines() if line.get("level") in ("error", "critical")
            ]
            assert not errors, (
                f"{input_class}: {len(errors)} error lines in the service log, first: "
                f"{str(errors[0].get('message'))[:200]!r} {str(errors[0].get('exc', ''))[-300:]!r}"
            )
        self.check_stream(input_class)

    def new_log_lines(self) -> list[dict[str, Any]]:
        """The log lines the service wrote since the last call (read without waiting)."""
        fresh: list[dict[str, Any]] = []
        pending = self.service._queue  # the harness's stderr reader hands lines over here
        while True:
            try:
                raw = pending.get_nowait()
            except queue.Empty:
                break
            if raw is None:
                break
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"message": raw.rstrip(), "level": "raw"}
            self.service.lines.append(line)
            fresh.append(line)
        return fresh

    def check_stream(self, input_class: str) -> None:
        url = (self.service.storage / "embedded-nats.url").read_text().strip()
        subjects = asyncio.run(stream_subjects(url))
        for subject in subjects:
            match = _SUBJECT.fullmatch(subject)
            assert match, f"{input_class}: malformed subject in the stream: {subject[:200]!r}"
            assert is_valid_token(match["tenant"]), f"{input_class}: bad tenant in {subject!r}"
            assert match["type"] in self.types, f"{input_class}: unexpected type in {subject!r}"
            assert match["id"] in self.known_ids, (
                f"{input_class}: the stream holds aggregate {match['id']}, an id no client sent "
                f"in canonical form and the server did not make (a rewritten id?): {subject!r}"
            )


async def stream_subjects(url: str) -> list[str]:
    """Every subject in the event stream (paged: the server answers at most a page)."""
    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    try:
        subjects: list[str] = []
        while True:
            request = {"subjects_filter": ">", "offset": len(subjects)}
            reply = await nc.request(
                f"$JS.API.STREAM.INFO.{STREAM}", json.dumps(request).encode(), timeout=10
            )
            info = json.loads(reply.data)
            page = (info.get("state") or {}).get("subjects") or {}
            subjects.extend(page)
            total = info.get("total", len(subjects))
            if not page or len(subjects) >= total:
                return subjects
    finally:
        await nc.close()


@contextlib.contextmanager
def fuzz_node(
    name: str, tmp_path_factory: Any, env: dict[str, str] | None = None
) -> Iterator[FuzzNode]:
    """A service for one fuzz module, warmed up; its memory figures land in the tally."""
    forbid_path(Path(tmp_path_factory.getbasetemp()))
    with running_service(tmp_path_factory.mktemp(name), env=env) as service:
        node = FuzzNode(name, service)
        node.warm_up()
        try:
            yield node
        finally:
            write_tally(Path(tmp_path_factory.getbasetemp()))


def tally_summary() -> list[str]:
    return TALLY.lines() if TALLY.counts else []
