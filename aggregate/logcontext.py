"""The request context carried by log lines (DESIGN §8), as context variables.

Set by the transports around each command (``with log_context(tenant_id=..., ...)``) and
read by the JSON log formatter; context variables follow asyncio tasks and Trio tasks alike.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

_fields: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("log_fields", default={})  # noqa: B039


def current_log_fields() -> dict[str, str]:
    """The fields bound in this task (tenant_id, correlation_id, trace_id, command_id, ...)."""
    return _fields.get()


class log_context:  # used like a function: ``with log_context(...)``
    """Bind fields to every log line emitted inside the block (None values are skipped).

    A class rather than a ``contextlib.contextmanager`` generator: each command enters one
    or two, and a generator's frame, ``next`` and ``StopIteration`` cost more than the
    binding itself.
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: str | None) -> None:
        self._fields = fields

    def __enter__(self) -> None:
        merged = _fields.get().copy()
        for name, value in self._fields.items():
            if value is not None:
                merged[name] = value
        self._token = _fields.set(merged)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _fields.reset(self._token)
