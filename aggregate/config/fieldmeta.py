"""The metadata of a ``Settings`` field: its parser, its meaning and where it may be set.

``aggregate.config.loader`` parses each value with the field's ``parse``; ``doc`` and
``kind`` are what docs/configuration.md says of the setting; ``scope`` decides whether the
environment, the config file or neither may set it; a ``secret`` value is hidden in the
``repr`` of ``Settings``.
"""

from __future__ import annotations

from typing import Any, Literal

from aggregate.config import values as v

Scope = Literal["any", "env", "file", "internal"]
"""Where a field may be set: anywhere, only in the environment, only in the config file, or
nowhere (computed by the loader)."""


def meta(
    parse: v.Parser,
    doc: str,
    *,
    kind: str,
    scope: Scope = "any",
    secret: bool = False,
    env: str | None = None,
) -> dict[str, Any]:
    """``env``: the environment variable when it is not ``AGGREGATE_`` + the upper-case
    field name (the OpenTelemetry variables keep their standard names)."""
    metadata = {"parse": parse, "doc": doc, "kind": kind, "scope": scope, "secret": secret}
    if env is not None:
        metadata["env"] = env
    return metadata


def ms(doc: str, minimum: int = 1) -> dict[str, Any]:
    """A duration in integer milliseconds, at least ``minimum``."""
    return meta(v.int_parser(minimum), doc, kind="int (ms)")


def opt_path(doc: str, *, scope: Scope = "any") -> dict[str, Any]:
    """A filesystem path that may be left unset."""
    return meta(v.optional(v.parse_path), doc, kind="path", scope=scope)
