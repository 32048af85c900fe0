"""Translation of nats-py exceptions into the service's errors (STYLE 9).

Only this package imports nats-py's error classes; everything above it sees
``VersionConflictError``, ``BackendUnavailableError`` and friends.
"""

from __future__ import annotations

import re

import nats.errors
import nats.js.errors

from aggregate.domain.errors import ConfigError

CONFLICT_ERR_CODES = frozenset({10071, 10164})
"""JetStream's "wrong last sequence" (10071) and its variant inside atomic batches (10164)."""

_WRONG_LAST_SEQ = re.compile(r"wrong last sequence:\s*(\d+)")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionReconnectingError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)
"""Failures after which the same request may succeed: the server is restarting, a stream
leader is being elected, or the connection is being re-established."""

FATAL_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.NoServersError,
)
"""Failures of the connection itself: retrying on it cannot help."""


class StreamPolicyError(ConfigError):
    """Raised when an existing stream is incompatible with the event store's policy
    (DESIGN §4.1): it could drop events, refuse appends or answer no direct gets.

    ``problems`` lists one line per incompatible setting; the existing stream is left
    unchanged, since fixing it may need an operator's decision (or a new stream).
    """

    def __init__(self, stream: str, problems: list[str]) -> None:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"JetStream stream {stream!r} exists but is incompatible with the event store "
            f"(it is never changed automatically; fix it with `nats stream edit` or point "
            f"the service at another stream):\n{lines}"
        )
        self.stream = stream
        self.problems = tuple(problems)


def is_conflict(exc: BaseException) -> bool:
    """True when ``exc`` is JetStream's answer to a stale expected subject sequence."""
    return isinstance(exc, nats.js.errors.APIError) and exc.err_code in CONFLICT_ERR_CODES


def conflict_actual_seq(exc: nats.js.errors.APIError) -> int | None:
    """The subject's real last sequence, parsed from "wrong last sequence: N", if given."""
    match = _WRONG_LAST_SEQ.search(exc.description or "")
    return int(match.group(1)) if match else None
