"""Fuzz: hostile Starlark programs, given to ``aggregate check`` and to a service start, and
run by a real service under process isolation.

- Programs that cannot compile within their limits (a constant-folded 2 GB string, a
  10,000-deep literal) are refused by ``aggregate check`` and by ``aggregate serve``, with a
  message that names the type, says it happened while compiling, and (for memory) names
  the limit; never a traceback, never a dead worker as the only clue.
- Programs that blow up at run time (memory, big-integer and loop bombs, huge rejections,
  huge events, ``fail`` with a huge message) get a clear status each, with a bounded
  message, and the node goes on serving good commands.
- A type that runs ``inline`` (a bomb there aborts the whole service) is flagged loudly by
  ``aggregate check`` and in the start-up log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from aggregate.adapters.nats_server import free_port
from aggregate.config import example_manifest_path
from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.fuzz_support import (
    BANK,
    GOOD_TENANT,
    FuzzNode,
    SyncClient,
    check_status,
    forbid_path,
    open_account_request,
)
from tests.integration.service_harness import start_service

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration

MEMORY_MB = 256
START_REFUSAL_TIMEOUT = 90.0
LIMITS = {
    "AGGREGATE_PROGRAM_MAX_MEMORY_MB": str(MEMORY_MB),
    "AGGREGATE_PROGRAM_TIMEOUT_MS": "500",
    "AGGREGATE_PROGRAM_HARD_TIMEOUT_MS": "1500",
    "AGGREGATE_PROGRAM_WORKERS": "2",
}
BANK_DIR = example_manifest_path("bank").parent
PASSIVE_APPLY = "def apply(state, event):\n    return state\n"
RUNTIME, COMPILE, INLINE = (
    "hostile programs (run time)",
    "hostile programs (compile time)",
    "inline isolation is flagged",
)

# name -> (decide body, the command's extra fields, statuses allowed)
RUNTIME_BOMBS: dict[str, tuple[str, dict[str, int], frozenset[str]]] = {
    "string-bomb": (
        's = "x" * command["n"]\n    return [{"type": "Grew", "n": len(s)}]',
        {"n": 2_000_000_000},
        frozenset({"RESOURCE_EXHAUSTED"}),
    ),
    "list-bomb": (
        's = [0] * command["n"]\n    return [{"type": "Grew", "n": len(s)}]',
        {"n": 2_000_000_000},
        frozenset({"RESOURCE_EXHAUSTED"}),
    ),
    "bigint-bomb": (
        "x = 7\n    for i in range(64):\n        x = x * x\n    return []",
        {},
        frozenset({"RESOURCE_EXHAUSTED"}),
    ),
    "long-loop": (
        "n = 0\n    for i in range(1000000000):\n        n += i\n    return []",
        {},
        frozenset({"RESOURCE_EXHAUSTED"}),
    ),
    "nested-loops": (
        "for i in range(100000):\n        for j in range(100000):\n            pass\n    return []",
        {},
        frozenset({"RESOURCE_EXHAUSTED"}),
    ),
    "huge-reject": (
        'return reject("r" * command["n"])',
        {"n": 1_000_000},
        frozenset({"FAILED_PRECONDITION"}),
    ),
    "folded-reject": ('return reject("r" * 1000000)', {}, frozenset({"FAILED_PRECONDITION"})),
    "huge-event": (
        'return [{"type": "Big", "blob": "x" * 10000000}]',
        {},
        frozenset({"RESOURCE_EXHAUSTED", "INTERNAL"}),
    ),
    "many-events": (
        'return [{"type": "E", "i": i} for i in range(1000000)]',
        {},
        frozenset({"RESOURCE_EXHAUSTED", "INTERNAL"}),
    ),
    "huge-fail": ('fail("f" * command["n"])', {"n": 1_000_000}, frozenset({"INTERNAL"})),
}
LIMIT_FIGURES = (f"{MEMORY_MB}", f"{MEMORY_MB * 1024 * 1024}")
"""The memory limit, as MiB or bytes: a refusal for memory must name one of them."""
COMPILE_BOMBS = {
    # Never called: the compiler folds the constant, so compiling needs 2 GB.
    "folded-string": (
        'def never():\n    return "x" * 2000000000\n\ndef decide(state, command):\n    return []\n',
        ("memory",),
    ),
    "deep-literal": (
        "X = " + "[" * 10_000 + "]" * 10_000 + "\n\ndef decide(state, command):\n    return []\n",
        (),
    ),
}


def write_manifest(directory: Path, types: dict[str, dict[str, str]]) -> Path:
    """A manifest of ``types`` (name -> decide/apply sources, isolation), files beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, spec in types.items():
        (directory / f"{name}.decide.star").write_text(spec["decide"])
        (directory / f"{name}.apply.star").write_text(spec.get("apply", PASSIVE_APPLY))
        entries[name] = {
            "language": "starlark",
            "isolation": spec.get("isolation", "process"),
            "decide": f"{name}.decide.star",
            "apply": f"{name}.apply.star",
        }
    path = directory / "manifest.json"
    path.write_text(json.dumps({"aggregate_types": entries}))
    return path


def bank_type(isolation: str = "process") -> dict[str, str]:
    return {
        "decide": (BANK_DIR / "decide.star").read_text(),
        "apply": (BANK_DIR / "apply.star").read_text(),
        "isolation": isolation,
    }


def run_check(manifest: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATE_")}
    environment.update(LIMITS, AGGREGATE_MANIFEST_PATH=str(manifest))
    return subprocess.run(
        [sys.executable, "-m", "aggregate.cli", "check"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


# --- run time -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzNode]:
    directory = tmp_path_factory.mktemp("hostile-programs")
    forbid_path(directory)
    types = {BANK: bank_type(), "trusted-inline": bank_type("inline")}
    for name, (body, _, _) in RUNTIME_BOMBS.items():
        types[name] = {"decide": f"def decide(state, command):\n    {body}\n"}
    manifest = write_manifest(directory / "programs", types)
    env = {**LIMITS, "AGGREGATE_MANIFEST_PATH": str(manifest)}
    service = start_service(directory / "storage", env=env, example=None)
    try:
        fuzzed = FuzzNode("hostile-programs", service, types=frozenset(types))
        fuzzed.warm_up()
        yield fuzzed
    finally:
        if service.proc.poll() is None:
            service.stop(signal.SIGTERM, timeout=30)


@pytest.mark.parametrize("bomb", list(RUNTIME_BOMBS))
def test_a_runtime_bomb_gets_a_clear_status_and_the_node_serves_on(
    node: FuzzNode, bomb: str
) -> None:
    _, extra, allowed = RUNTIME_BOMBS[bomb]
    client = SyncClient(node.grpc)
    try:
        request = pb.SubmitCommandRequest(
            aggregate_type=bomb,
            command_id=str(uuid.uuid4()),
            payload_json=json.dumps({"type": "Go", **extra}),
        )
        answer = client.submit(request, [("x-tenant-id", GOOD_TENANT)])
        check_status(
            RUNTIME, bomb, answer.status, answer.message, allowed, internal_needs_reason=True
        )
        if answer.status == "FAILED_PRECONDITION":
            assert answer.message.startswith("r"), (bomb, answer.message[:100])
        good = client.submit(open_account_request(bomb), [("x-tenant-id", GOOD_TENANT)])
        check_status(RUNTIME, f"a good command after {bomb}", good.status, good.message, {"OK"})
        node.remember(good.response.aggregate_id)
    finally:
        client.close()
    node.check(f"{RUNTIME}: {bomb}", log_errors_allowed=True)


def test_the_start_up_log_flags_inline_isolation(node: FuzzNode) -> None:
    warnings = [
        line
        for line in node.service.lines
        if line.get("level") == "warning"
        and "inline" in str(line.get("message"))
        and "trusted-inline" in json.dumps(line)
    ]
    check_status(INLINE, "start-up log", "FLAGGED" if warnings else "SILENT", "", {"FLAGGED"})


# --- compile time and aggregate check -------------------------------------------------------


def refusal_problem(text: str, bomb: str, words: tuple[str, ...]) -> str | None:
    """What a refusal to compile ``bomb`` lacks, or None when one line of ``text`` names
    the type, says it was compiling, and (``words``: for memory) names the limit."""
    needed = (bomb, "compil", *words)
    for line in text.splitlines():
        lowered = line.lower()
        if all(w.lower() in lowered for w in needed) and (
            not words or any(figure in line for figure in LIMIT_FIGURES)
        ):
            return None
    limit = f" and the limit ({' or '.join(LIMIT_FIGURES)})" if words else ""
    return f"no line naming {', '.join(needed)}{limit}"


def verdict(returncode: int, problem: str | None) -> str:
    if returncode == 0:
        return "ACCEPTED"
    return "REFUSED" if problem is None else "REFUSED, UNCLEARLY"


@pytest.mark.parametrize("bomb", list(COMPILE_BOMBS))
def test_aggregate_check_refuses_a_program_that_cannot_compile(tmp_path: Path, bomb: str) -> None:
    source, words = COMPILE_BOMBS[bomb]
    manifest = write_manifest(tmp_path, {BANK: bank_type(), bomb: {"decide": source}})
    result = run_check(manifest)
    text = result.stdout + result.stderr
    problem = "exit code 0" if result.returncode == 0 else refusal_problem(text, bomb, words)
    if "Traceback" in text:
        problem = "a traceback instead of a message"
    check_status(
        COMPILE,
        f"aggregate check, {bomb}",
        verdict(result.returncode, problem),
        f"{problem}: {text[-300:]}",
        {"REFUSED"},
        operator_facing=True,
    )


def run_serve(storage: Path, manifest: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATE_")}
    environment.update(LIMITS, AGGREGATE_MANIFEST_PATH=str(manifest))
    command = [
        sys.executable,
        "-m",
        "aggregate.cli",
        "serve",
        "--storage",
        str(storage),
        "--grpc-addr",
        f"127.0.0.1:{free_port()}",
        "--http-addr",
        f"127.0.0.1:{free_port()}",
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=environment,
        timeout=START_REFUSAL_TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize("bomb", list(COMPILE_BOMBS))
def test_a_service_start_refuses_a_program_that_cannot_compile(tmp_path: Path, bomb: str) -> None:
    """The service exits (it never serves), saying in one line which type, that it was
    compiling, and (for memory) the limit."""
    source, words = COMPILE_BOMBS[bomb]
    manifest = write_manifest(tmp_path / "programs", {BANK: bank_type(), bomb: {"decide": source}})
    result = run_serve(tmp_path / "storage", manifest)
    messages = []
    for raw in result.stderr.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            messages.append(raw)  # stderr that is not a log line (a traceback's last line)
            continue
        messages.append(str(line.get("message", "")) if isinstance(line, dict) else raw)
    text = "\n".join(messages)
    problem = "exit code 0" if result.returncode == 0 else refusal_problem(text, bomb, words)
    check_status(
        COMPILE,
        f"service start, {bomb}",
        verdict(result.returncode, problem),
        f"{problem}: {text[-300:]}",
        {"REFUSED"},
        operator_facing=True,
    )


def test_aggregate_check_flags_inline_isolation_and_only_it(tmp_path: Path) -> None:
    inline = run_check(write_manifest(tmp_path / "inline", {BANK: bank_type("inline")}))
    process = run_check(write_manifest(tmp_path / "process", {BANK: bank_type("process")}))
    assert (inline.returncode, process.returncode) == (0, 0), inline.stderr + process.stderr
    assert json.loads(process.stdout)["warnings"] == [], process.stdout
    assert "warn" not in process.stderr.lower(), process.stderr
    text = inline.stdout + inline.stderr
    flagged = "warn" in text.lower() and "inline" in text and BANK in text
    check_status(
        INLINE, "aggregate check", "FLAGGED" if flagged else "SILENT", text[-300:], {"FLAGGED"}
    )
