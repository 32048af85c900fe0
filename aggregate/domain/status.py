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
    (e.InvalidArgumentError, "INVALID_ARGUMENT", 400),
    (e.AggregateNotFoundError, "NOT_FOUND", 404),
    (e.TenantAccessDeniedError, "PERMISSION_DENIED", 403),
    (e.TenantUnavailableError, "UNAVAILABLE", 503),
    (e.BackendUnavailableError, "UNAVAILABLE", 503),
    (e.ProgramLimitError, "RESOURCE_EXHAUSTED", 429),
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


def outcome_of(exc: BaseException | None) -> str:
    """The ``outcome`` metric label of a command: ``ok`` or the lower-case status name."""
    return "ok" if exc is None else status_of(exc)[0].lower()


def new_error_id() -> str:
    """A fresh id for one INTERNAL error: 16 hex digits, sent to the client and logged with
    the error's detail, so an operator finds the one line from what the client reports."""
    return os.urandom(8).hex()


def public_message(exc: BaseException, *, error_id: str | None = None) -> str:
    """What a client may be told: the error's own message, except for INTERNAL errors.

    An INTERNAL error's detail (a program's origin, which names a server path, its source
    lines, a stack) stays in the log; the client gets a short message naming the program's
    aggregate type when a program failed, and ``error_id``, the key of the log line that
    holds the detail.
    """
    name, _ = status_of(exc)
    if name == "INTERNAL":
        where = f" (error id {error_id})" if error_id else ""
        if isinstance(exc, e.ProgramError) and exc.program:
            return f"program of type {exc.program!r} failed{where}; the service log has the details"
        if error_id:
            return f"internal error{where}; the service log has the details"
        return "internal error; see the service log for this request's correlation id"
    if isinstance(exc, e.AggregateError):
        return exc.message
    return str(exc) or type(exc).__name__
