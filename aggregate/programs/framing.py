"""The wire between the service and a program worker process: framed JSON over pipes.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON. The
service sends one request frame and reads one answer frame; the worker announces itself
with a ``{"ready": <pid>}`` frame at start. A batch is one request frame
``{"op": "batch", "calls": [<request>, ...]}`` answered by one frame
``{"ok": [<answer>, ...]}``, an answer per call in order. Answers are ``{"ok": <value>}`` or
``{"error": {"kind": ..., "message": ..., ...}}``; errors keep their class across the pipe
through ``error_to_wire`` / ``error_from_wire``.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any

from aggregate.domain.errors import (
    AggregateError,
    InvalidArgumentError,
    ProgramCompileError,
    ProgramError,
    ProgramLimitError,
)

if TYPE_CHECKING:
    from typing import BinaryIO

HEADER = struct.Struct(">I")
MISSING = "missing"  # the worker lacks a program text: resend the request with sources

_KINDS: dict[str, type[AggregateError]] = {
    "compile": ProgramCompileError,
    "program": ProgramError,
    "limit": ProgramLimitError,
    "invalid": InvalidArgumentError,
}


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode(value: Any) -> bytes:
    """Compact JSON bytes (integers exact; NaN and infinities refused).

    Raises:
        ValueError, TypeError: ``value`` is not plain JSON.
    """
    return _ENCODER.encode(value).encode()


def decode(body: bytes) -> Any:
    """The JSON value of a frame's body (UTF-8, as ``encode`` writes it).

    Raises:
        ValueError: not UTF-8 JSON.
    """
    return json.loads(body.decode())


def batch_body(bodies: list[bytes]) -> bytes:
    """One batch request holding the encoded requests ``bodies``, in order."""
    return b'{"op":"batch","calls":[' + b",".join(bodies) + b"]}"


def frame(body: bytes) -> bytes:
    """``body`` with its length header."""
    return HEADER.pack(len(body)) + body


def read_frame(stream: BinaryIO, max_bytes: int) -> bytes | None:
    """Read one frame's body from a blocking stream; ``None`` at a clean end of stream.

    Raises:
        EOFError: the stream ended inside a frame.
        ValueError: the frame is larger than ``max_bytes``.
    """
    header = stream.read(HEADER.size)
    if not header:
        return None
    if len(header) < HEADER.size:
        raise EOFError("stream ended inside a frame header")
    (size,) = HEADER.unpack(header)
    if size > max_bytes:
        raise ValueError(f"frame of {size} bytes exceeds the limit of {max_bytes}")
    body = stream.read(size)
    if len(body) < size:
        raise EOFError("stream ended inside a frame")
    return body


def error_to_wire(exc: AggregateError) -> dict[str, Any]:
    """An error as the worker sends it."""
    kind = next((k for k, cls in _KINDS.items() if isinstance(exc, cls)), "program")
    wire: dict[str, Any] = {"kind": kind, "message": exc.message}
    if isinstance(exc, ProgramError):
        wire |= {"program": exc.program, "origin": exc.origin}
        wire |= {"line": exc.line, "column": exc.column}
    return wire


def error_from_wire(wire: dict[str, Any]) -> AggregateError:
    """The error a worker reported, as the same class (``ProgramError`` if unknown)."""
    cls = _KINDS.get(str(wire.get("kind")), ProgramError)
    message = str(wire.get("message", "the program worker reported an unknown error"))
    if issubclass(cls, ProgramError):
        return cls(
            message,
            program=wire.get("program"),
            origin=wire.get("origin"),
            line=wire.get("line"),
            column=wire.get("column"),
        )
    return cls(message)
