"""The error hierarchy. Every error the service raises on purpose is an ``AggregateError``.

Each subclass names a condition; adapters translate library exceptions into these at the
boundary (STYLE 9), and one table (``aggregate.domain.status``) maps them to gRPC status and
HTTP codes.
"""

from __future__ import annotations


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


class CorruptDataError(AggregateError):
    """Raised when stored data cannot be decoded or breaks an invariant (INTERNAL)."""
