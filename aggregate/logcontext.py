"""The request context carried by log lines (DESIGN §8), as context variables.

Set by the transports around each command (``with log_context(tenant_id=..., ...)``) and
read by the JSON log formatter; context variables follow asyncio tasks and Trio tasks alike.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

_fields: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("log_fields", default={})  # noqa: B039


def current_log_fields() -> dict[str, str]:
    """The fields bound in this task (tenant_id, correlation_id, trace_id, command_id, ...)."""
    return _fields.get()


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Bind fields to every log line emitted inside the block (None values are skipped)."""
    merged = {**_fields.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _fields.set(merged)
    try:
        yield
    finally:
        _fields.reset(token)
