"""The one table from errors to gRPC status names and HTTP codes (DESIGN §9.1, STYLE 9).

Status names are the gRPC canonical names (``grpclib.const.Status[name]`` and
``grpc.StatusCode[name]`` both accept them); transports look them up here and never decide
on their own.
"""

from __future__ import annotations

import os

from aggregate.domain import errors as e

# Most specific first: the first matching class wins.
_TABLE: tuple[tuple[type[BaseException], str, int], ...] = (
    (e.UnknownAggregateTypeError, "INVALID_ARGUMENT", 400),
    (e.ExpectedVersionMismatchError, "ABORTED", 409),
    (e.VersionConflictError, "ABORTED", 409),
    (e.CommandRejectedError, "FAILED_PRECONDITION", 422),
    (e.CommandIdTooOldError, "FAILED_PRECONDITION", 422),
    (e.TenantMoveError, "FAILED_PRECONDITION", 409),
    (e.InvalidArgumentError, "INVALID_ARGUMENT", 400),
    (e.ProgramReloadError, "FAILED_PRECONDITION", 422),
    (e.AggregateNotFoundError, "NOT_FOUND", 404),
    (e.TenantAccessDeniedError, "PERMISSION_DENIED", 403),
    (e.TenantUnavailableError, "UNAVAILABLE", 503),
    (e.CircuitOpenError, "UNAVAILABLE", 503),
    (e.BackendUnavailableError, "UNAVAILABLE", 503),
    (e.ProgramLimitError, "RESOURCE_EXHAUSTED", 429),
    (e.QuotaExceededError, "RESOURCE_EXHAUSTED", 429),
    (e.OverloadedError, "RESOURCE_EXHAUSTED", 429),
    (e.QueryTooExpensiveError, "RESOURCE_EXHAUSTED", 429),
    (e.ResourceExhaustedError, "RESOURCE_EXHAUSTED", 429),
    (e.ProgramError, "INTERNAL", 500),
    (e.CorruptDataError, "INTERNAL", 500),
    (e.ConfigError, "INTERNAL", 500),
    (TimeoutError, "DEADLINE_EXCEEDED", 504),
)


def status_of(exc: BaseException) -> tuple[str, int]:
    """(gRPC status name, HTTP code) for an error; anything unknown is INTERNAL / 500."""
    for kind, name, http in _TABLE:
        if isinstance(exc, kind):
            return name, http
    return "INTERNAL", 500


RETRY_AFTER_HEADER = "retry-after-ms"
"""Trailing metadata of a refusal that says when to retry: integer milliseconds."""


def retry_after_ms_of(exc: BaseException) -> int | None:
    """How long the client should wait before retrying, for the refusals that know
    (open breaker, quota, load shedding); None for every other error."""
    return exc.retry_after_ms if isinstance(exc, e.RetryLater) else None


def outcome_of(exc: BaseException | None) -> str:
    """The ``outcome`` metric label of a command: ``ok`` or the lower-case status name."""
    return "ok" if exc is None else status_of(exc)[0].lower()


_SEE_LOG = "; see the service log for this request's correlation id"


def new_error_id() -> str:
    """A fresh id for one INTERNAL error: 16 hex digits, sent to the client and logged with
    the error's detail, so an operator finds the one line from what the client reports."""
    return os.urandom(8).hex()


def public_message(exc: BaseException, *, error_id: str | None = None) -> str:
    """What a client may be told, at most ``MAX_MESSAGE_BYTES``: the error's own message
    (whose client input is quoted, STYLE 23), except for INTERNAL errors.

    An INTERNAL error's detail (a program's origin, which names a server path, its source
    lines, values it was handed, a stack) stays in the log; the client gets a short message
    naming the program's aggregate type, line and column when a program failed, and
    ``error_id``, the key of the log line that holds the detail.
    """
    name, _ = status_of(exc)
    see_log = f" (error id {error_id}); the service log has the details" if error_id else _SEE_LOG
    if isinstance(exc, e.ProgramError):
        where = f" at line {exc.line}, column {exc.column}" if exc.line is not None else ""
        which = f"the program of aggregate type {exc.program}" if exc.program else "a program"
        return e.bound_message(f"{which} failed{where}{see_log}")
    if name == "INTERNAL":
        return f"internal error{see_log}"
    if isinstance(exc, e.AggregateError):
        return e.bound_message(exc.message)
    return e.bound_message(str(exc) or type(exc).__name__)
