"""The error hierarchy. Every error the service raises on purpose is an ``AggregateError``.

Each subclass names a condition; adapters translate library exceptions into these at the
boundary (STYLE 9), and one table (``aggregate.domain.status``) maps them to gRPC status and
HTTP codes.

Messages quote, never echo (STYLE 23): whatever a client sent is shown through ``quote``
(a short prefix), and no message a client sees is longer than ``MAX_MESSAGE_BYTES``.
"""

from __future__ import annotations

import re
import reprlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

QUOTE_CHARS = 64
"""How much of a client's value an error message shows (``quote``): a whole tenant id, type
name or UUID, never more."""

MAX_MESSAGE_BYTES = 1024
"""The longest message (UTF-8 bytes) a client is sent with an error status, rejection reasons
included. gRPC percent-encodes ``grpc-message`` (up to 3 bytes per byte): 1 KiB stays well
inside the 8 KiB metadata limit clients such as grpcio apply by default, so the status the
client sees is the one the service chose."""


_SURROGATE = re.compile("[\ud800-\udfff]")


class _ShortRepr(reprlib.Repr):
    """``reprlib`` with small limits, and no ``repr`` of huge integers (which fails past
    Python's 4,300-digit conversion limit, and costs quadratic time before that)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 2
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = 4
        self.maxstring = self.maxother = self.maxlong = QUOTE_CHARS

    def repr_int(self, x: int, level: int) -> str:
        bits = x.bit_length()
        return f"<int of {bits} bits>" if bits > 1024 else super().repr_int(x, level)


_SHORT_REPR = _ShortRepr()


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """How an error message shows a value the client sent: its ``repr`` when it has at most
    ``limit`` characters, else the ``repr`` of its first ``limit`` characters followed by
    ``…(N chars)``. Non-strings get a shortened ``repr`` (a few items, short leaves).

    ``repr`` escapes control characters and lone surrogates, so the result is always
    printable text that encodes to UTF-8.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}…({len(value)} chars)"
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= 4 * limit else f"{text[: 4 * limit]}…"


def quote_list(values: Iterable[object], *, limit: int = 10) -> str:
    """At most ``limit`` values through ``quote``, comma-separated, then ``and N more``."""
    items = list(values)
    shown = ", ".join(quote(v) for v in items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


def bound_message(text: str, max_bytes: int = MAX_MESSAGE_BYTES) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes (at a character boundary), ending
    with ``…(N chars)`` when cut; lone surrogates (which cannot be sent) become U+FFFD."""
    if text.isascii():
        if len(text) <= max_bytes:
            return text
    else:
        try:
            size = len(text.encode())
        except UnicodeEncodeError:
            text = _SURROGATE.sub("\ufffd", text)
            size = len(text.encode())
        if size <= max_bytes:
            return text
    marker = f"…({len(text)} chars)"
    room = max_bytes - len(marker.encode())
    return text[:room].encode()[:room].decode("utf-8", "ignore") + marker


class AggregateError(Exception):
    """Base of every error the service raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(AggregateError):
    """Raised when a request, id, payload or message is malformed (gRPC INVALID_ARGUMENT)."""


class ConfigError(AggregateError):
    """Raised when configuration or a manifest is invalid; the message names key and file."""


class UnknownAggregateTypeError(InvalidArgumentError):
    """Raised when a command names an aggregate type that is not configured."""

    @classmethod
    def of(cls, name: str, configured: Iterable[str]) -> UnknownAggregateTypeError:
        """The error for ``name``, listing the configured types (the first ten)."""
        names = sorted(configured)
        known = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        return cls(
            f"aggregate type {quote(name)} is not configured; configured types: {known or 'none'}"
        )


class AggregateNotFoundError(AggregateError):
    """Raised when an aggregate is read that has no events (gRPC NOT_FOUND)."""


class CommandRejectedError(AggregateError):
    """Raised when ``decide`` rejects a command: a business outcome, not a crash.

    ``reason`` is the program's own text (gRPC FAILED_PRECONDITION).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CommandIdTooOldError(AggregateError):
    """Raised when a UUIDv7 command id is older than the aggregate's de-duplication horizon
    and is not remembered: it might have been applied already, so it is refused rather than
    risk applying it twice (DESIGN §4.4; gRPC FAILED_PRECONDITION)."""


class VersionConflictError(AggregateError):
    """Raised when an append's expected stream sequence is stale (JetStream 10071/10164),
    or when a command's ``expected_version`` does not match (gRPC ABORTED)."""

    def __init__(self, message: str, *, expected: int | None = None, actual: int | None = None):
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class DuplicateAppendError(AggregateError):
    """Raised by an event store when the appended message's id was already stored within
    the store's duplicate window (JetStream ``Nats-Msg-Id`` de-duplication): nothing new was
    stored; ``seq`` is where the earlier message is."""

    def __init__(self, message: str, *, seq: int) -> None:
        super().__init__(message)
        self.seq = seq


class ExpectedVersionMismatchError(VersionConflictError):
    """Raised when a command's ``expected_version`` differs from the aggregate's version."""


class TenantAccessDeniedError(AggregateError):
    """Raised when stored data's tenant does not match the key it was read under
    (corruption or forgery), or a tenant is not allowed on this node (PERMISSION_DENIED)."""


class TenantUnavailableError(AggregateError):
    """Raised when this node does not host or no longer accepts a tenant (UNAVAILABLE).

    ``owner`` names the shard that now owns the tenant, when known.
    """

    def __init__(self, message: str, *, owner: str | None = None) -> None:
        super().__init__(message)
        self.owner = owner


class BackendUnavailableError(AggregateError):
    """Raised when the event store or another backend cannot be reached (UNAVAILABLE)."""


class ProgramError(AggregateError):
    """Raised when a decide/apply program crashes or returns a malformed value (INTERNAL).

    The message carries the program name and, when known, line and column; the same facts
    are attributes (``program``: aggregate type, ``origin``: file or reference, ``line`` and
    ``column``: 1-based, ``None`` when unknown).
    """

    def __init__(
        self,
        message: str,
        *,
        program: str | None = None,
        origin: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message)
        self.program = program
        self.origin = origin
        self.line = line
        self.column = column


class ProgramCompileError(ProgramError, ConfigError):
    """Raised when a program does not parse or compile; names program, line and column."""


class ProgramLimitError(AggregateError):
    """Raised when a program exceeds its time, memory or stack budget (RESOURCE_EXHAUSTED)."""


class ResourceExhaustedError(AggregateError):
    """Raised when a payload, in-flight or other request limit is exceeded."""


class RetryLater(Exception):
    """Mixin of the refusals that tell the client when to come back: ``retry_after_ms``
    travels as the ``retry-after-ms`` trailing metadata of the call."""

    retry_after_ms: int


class CircuitOpenError(BackendUnavailableError, RetryLater):
    """Raised when a circuit breaker refuses a call: its backend failed repeatedly and the
    breaker is open (or half-open with its probe already running). Nothing was attempted,
    so a retry with the same command id is safe (UNAVAILABLE)."""

    def __init__(self, message: str, *, breaker: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.breaker = breaker
        self.retry_after_ms = retry_after_ms


class QuotaExceededError(ResourceExhaustedError, RetryLater):
    """Raised when a tenant is over its quota (commands per second or commands in
    flight); the command was not run (RESOURCE_EXHAUSTED)."""

    def __init__(
        self, message: str, *, tenant_id: str, retry_after_ms: int, rate: float = 0.0
    ) -> None:
        super().__init__(message)
        self.tenant_id = tenant_id
        self.retry_after_ms = retry_after_ms
        self.rate = rate
        """The commands/s quota that refused the command (0: its in-flight quota did)."""


class OverloadedError(ResourceExhaustedError, RetryLater):
    """Raised when the node is at its in-flight limit and sheds a new command at once
    rather than queue it; the command was not run (RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str, *, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class QueryTooExpensiveError(ResourceExhaustedError):
    """Raised when a query needs more SQLite work than one query may do (the read side's
    progress-handler bound; gRPC RESOURCE_EXHAUSTED)."""


class CorruptDataError(AggregateError):
    """Raised when stored data cannot be decoded or breaks an invariant (INTERNAL)."""


class ProgramReloadError(AggregateError):
    """Raised when a program reload is refused (the manifest or a program is invalid, or a
    program does not compile): nothing changed, the programs loaded before keep serving.

    The message names the aggregate type, line and column when a program failed, never
    its source text or a server path (HTTP 422).
    """

    def __init__(
        self,
        message: str,
        *,
        program: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message)
        self.program = program
        self.line = line
        self.column = column


class TenantMoveError(AggregateError):
    """Raised when a tenant move cannot be done or finished: the target shard is not in the
    shard directory, an owner refused the drain, or the new owner did not accept the tenant
    before the move's deadline (FAILED_PRECONDITION). What was done stays done: the map
    names the new owner once written."""
