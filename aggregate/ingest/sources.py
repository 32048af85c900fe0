"""The configured ingestion sources (``ingest_sources``): parsed and checked once, here.

Two kinds, as a list of tables in the config file or a JSON list in
``AGGREGATE_INGEST_SOURCES``:

- ``{kind = "directory", root = "/data/billing", tenant = "acme"}``: every subdirectory
  ``<root>/nodes/<node>/`` is a source of its own, named ``<node>``, holding batch files
  ``usage_*.toml`` / ``usage_*.json``.
- ``{kind = "jetstream", name = "node-c", stream = "USAGE", subject = "usage.node-c",
  tenant = "acme"}``: each message on ``subject`` of ``stream`` is one JSON usage batch;
  one durable consumer per source.

``tenant`` may be left out: the default tenant is meant.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregate.domain.errors import quote

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SUBJECT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
MAX_SOURCES = 1000


@dataclass(frozen=True, slots=True)
class DirectoryRoot:
    """A directory whose ``nodes/<node>/`` subdirectories are sources."""

    root: Path
    tenant: str | None = None
    kind: str = "directory"


@dataclass(frozen=True, slots=True)
class JetStreamSourceConfig:
    """A subject of a JetStream stream, read through one durable consumer."""

    name: str
    stream: str
    subject: str
    tenant: str | None = None
    kind: str = "jetstream"


SourceConfig = DirectoryRoot | JetStreamSourceConfig


def _token(raw: dict[str, Any], name: str, where: str, *, required: bool = True) -> str | None:
    value = raw.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError(f"{where}: {name} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def _one(raw: object, where: str) -> SourceConfig:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a table (an object)")
    kind = raw.get("kind")
    tenant = _token(raw, "tenant", where, required=False)
    if kind == "directory":
        unknown = set(raw) - {"kind", "root", "tenant"}
        root = raw.get("root")
        if not isinstance(root, str) or not root:
            raise ValueError(f"{where}: root must be a directory path")
        if unknown:
            raise ValueError(f"{where}: unknown key {quote(sorted(unknown)[0])}")
        return DirectoryRoot(Path(root), tenant)
    if kind == "jetstream":
        unknown = set(raw) - {"kind", "name", "stream", "subject", "tenant"}
        if unknown:
            raise ValueError(f"{where}: unknown key {quote(sorted(unknown)[0])}")
        name = _token(raw, "name", where)
        stream = _token(raw, "stream", where)
        subject = raw.get("subject")
        if not isinstance(subject, str) or len(subject) > 255 or not _SUBJECT.fullmatch(subject):
            raise ValueError(f"{where}: subject must be a NATS subject without wildcards")
        assert name is not None
        assert stream is not None
        return JetStreamSourceConfig(name, stream, subject, tenant)
    raise ValueError(f"{where}: kind must be 'directory' or 'jetstream'")


def roots_relative_to(sources: tuple[SourceConfig, ...], base: Path) -> tuple[SourceConfig, ...]:
    """Relative directory roots taken from ``base`` (the config file's directory)."""
    return tuple(
        DirectoryRoot(base / s.root, s.tenant)
        if isinstance(s, DirectoryRoot) and not s.root.is_absolute()
        else s
        for s in sources
    )


def parse_sources(value: object) -> tuple[SourceConfig, ...]:
    """A list of source tables (config file) or its JSON text (environment).

    Raises:
        ValueError: not a list, too many sources, or a source that names what is wrong.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError:
            raise ValueError("expected a JSON list of source objects") from None
    if not isinstance(value, list):
        raise ValueError("expected a list of sources")
    if len(value) > MAX_SOURCES:
        raise ValueError(f"at most {MAX_SOURCES} sources")
    sources = tuple(_one(raw, f"source {i + 1}") for i, raw in enumerate(value))
    names = [s.name for s in sources if isinstance(s, JetStreamSourceConfig)]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"two JetStream sources are named {sorted(duplicates)[0]!r}")
    return sources
