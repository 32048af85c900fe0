"""A program worker process: ``python -m aggregate.programs.worker --limits '<json>'``.

Started by ``aggregate.programs.pool``; runs untrusted Starlark decide/apply programs away
from the service process. At start it caps its own address space (``RLIMIT_AS``), ignores
SIGINT (the pool owns its lifetime: end of stdin means exit), moves stdout aside so stray
writes cannot corrupt the frames, and announces ``{"ready": <pid>}``. Then it answers one
framed JSON request at a time (``aggregate.programs.framing``):

- ``{"op": "compile", "program", "entry": {"key", "origin"}, "roles": ["decide", ...],
  "sources"}`` → ``{"ok": null}`` once the text compiled and defines each role's function
- ``{"op": "decide", ..., "state", "command"}`` → ``{"ok": {"events", "state"}}`` or
  ``{"ok": {"rejected": reason}}``
- ``{"op": "apply", ..., "state", "events"}`` → ``{"ok": state}``
- ``{"op": "batch", "calls": [<decide or apply request>, ...], "sources"}`` →
  ``{"ok": [<answer>, ...]}``: each call answered on its own, in order

``sources`` maps source keys (SHA-256 of the text) to texts the worker may not have yet;
programs are compiled once per worker and cached by key. A request naming a key the
worker does not have and did not receive is answered ``{"error": {"kind": "missing"}}``.
A program that exhausts memory makes the interpreter abort the process: the pool sees the
worker die, answers ``ProgramLimitError`` and starts a new one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
from typing import TYPE_CHECKING, Any

from aggregate.domain.errors import AggregateError, ProgramError, ProgramLimitError
from aggregate.programs.base import Accepted, ProgramLimits
from aggregate.programs.framing import (
    MISSING,
    decode,
    encode,
    error_to_wire,
    frame,
    read_frame,
)
from aggregate.programs.starlark_compile import COMPILE_CACHE
from aggregate.programs.starlark_runtime import StarlarkPair

if TYPE_CHECKING:
    from typing import BinaryIO

    from aggregate.programs.starlark_compile import CompiledModule


class _Missing(Exception):
    """The request names a program text this worker does not have."""


def _module(
    entry: dict[str, Any], sources: dict[str, str], program: str, limits: ProgramLimits
) -> CompiledModule:
    key = entry["key"]
    cached = COMPILE_CACHE.get(key)
    if cached is not None:
        return cached
    if key not in sources:
        raise _Missing(key)
    return COMPILE_CACHE.compile(sources[key], entry["origin"], program=program, limits=limits)


def handle(request: dict[str, Any], limits: ProgramLimits) -> Any:
    """Answer one request (the value of ``"ok"``).

    Raises:
        AggregateError: the program's error (compile, runtime, limit, bad input).
        _Missing: a program text is needed.
    """
    program = str(request["program"])
    sources = request.get("sources") or {}
    op = request["op"]
    if op == "compile":
        entry = request["entry"]
        module = _module(entry, sources, program, limits)
        for role in request["roles"]:
            module.require(str(role), program=program, origin=entry["origin"])
        return None
    decide, apply = request["decide"], request["apply"]
    pair = StarlarkPair(
        program=program,
        decide_module=_module(decide, sources, program, limits),
        decide_origin=decide["origin"],
        apply_module=_module(apply, sources, program, limits),
        apply_origin=apply["origin"],
        limits=limits,
    )
    if op == "decide":
        decision = pair.decide(request["state"], request["command"])
        if isinstance(decision, Accepted):
            return {"events": decision.events, "state": decision.state}
        return {"rejected": decision.reason}
    if op == "apply":
        return pair.apply(request["state"], request["events"])
    raise ProgramError(f"unknown worker operation {op!r}")


def outcome(request: dict[str, Any], limits: ProgramLimits) -> dict[str, Any]:
    """The answer to one request, ``{"ok": ...}`` or ``{"error": ...}``; never raises for
    a program's fault.

    Raises:
        _Missing: a program text is needed.
    """
    try:
        return {"ok": handle(request, limits)}
    except AggregateError as exc:
        return {"error": error_to_wire(exc)}
    except MemoryError:
        error = ProgramLimitError(
            f"a program ran out of memory (max_memory_bytes={limits.max_memory_bytes})"
        )
        return {"error": error_to_wire(error)}
    except _Missing:
        raise
    except Exception as exc:  # a bug or an unexpected value: report it, keep serving
        return {"error": error_to_wire(ProgramError(f"worker error: {exc!r}"))}


def _batch(request: dict[str, Any], limits: ProgramLimits) -> dict[str, Any]:
    sources = request.get("sources") or {}
    answers = []
    for call in request["calls"]:
        if sources:
            call["sources"] = sources
        answers.append(outcome(call, limits))
    return {"ok": answers}


def answer(body: bytes, limits: ProgramLimits) -> bytes:
    """The encoded answer to one encoded request or batch (each call of a batch answered
    on its own: one call's error does not touch the others); never raises for a
    program's fault."""
    try:
        request = decode(body)
        if request.get("op") == "batch":
            return encode(_batch(request, limits))
        return encode(outcome(request, limits))
    except _Missing:
        return encode({"error": {"kind": MISSING, "message": "program text needed"}})
    except Exception as exc:  # unreadable request or unencodable answer: report, keep serving
        return encode({"error": error_to_wire(ProgramError(f"worker error: {exc!r}"))})


def serve(stdin: BinaryIO, stdout: BinaryIO, limits: ProgramLimits) -> None:
    """Answer requests until stdin ends."""
    stdout.write(frame(encode({"ready": os.getpid()})))
    stdout.flush()
    while True:
        body = read_frame(stdin, limits.max_message_bytes)
        if body is None:
            return
        stdout.write(frame(answer(body, limits)))
        stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point. Exit status 0 at end of input."""
    parser = argparse.ArgumentParser(prog="python -m aggregate.programs.worker")
    parser.add_argument("--limits", default="{}", help="ProgramLimits as a JSON object")
    args = parser.parse_args(argv)
    limits = ProgramLimits.from_json(json.loads(args.limits))
    resource.setrlimit(resource.RLIMIT_AS, (limits.max_memory_bytes, limits.max_memory_bytes))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else written to stdout lands on stderr
    try:
        serve(sys.stdin.buffer, protocol_out, limits)
    except (BrokenPipeError, EOFError):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
