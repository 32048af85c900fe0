"""The shard directory's entries: which shards are alive and where clients reach them.

Pure: no I/O. Every node keeps one entry in the NATS KV bucket ``AGGREGATE_SHARDS`` (key =
shard id), a JSON object ``{shard_id, grpc_addr, http_addr, started_at, version}`` refreshed
by a heartbeat; the bucket's ``max_age`` removes the entry of a shard that stopped
refreshing it. What is read back from KV is external input: ``parse_entry`` bounds and
validates it, so an address that reaches a gRPC trailer or an HTTP request is a plain
``host:port`` a client can dial (never a wildcard such as ``0.0.0.0``).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from aggregate.domain.errors import InvalidArgumentError, quote
from aggregate.domain.ids import TOKEN_PATTERN

MAX_ENTRY_BYTES: Final = 2048
"""Largest directory entry read from KV; a longer value is refused unread."""
MAX_ADDR_CHARS: Final = 261
"""Longest ``host:port`` (a 253-character DNS name, a colon, five digits, brackets)."""
MAX_VERSION_CHARS: Final = 64
"""Longest version text in an entry."""

_HOSTNAME: Final = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_VERSION: Final = re.compile(r"[A-Za-z0-9.+_-]{1,64}")
WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::", "[::]"})
"""Bind hosts that mean "every interface": no client can dial them."""


def validate_dial_address(value: object, what: str = "address") -> str:
    """Return ``value`` if it is a ``host:port`` a client can dial: a DNS name or an IP
    address that is not a wildcard (IPv6 in brackets), and a port in 1-65535.

    Raises:
        InvalidArgumentError: anything else; the message quotes a short prefix.
    """
    if not isinstance(value, str) or not value.isascii() or len(value) > MAX_ADDR_CHARS:
        raise InvalidArgumentError(f"{what} {quote(value)} is not a host:port")
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        sep, port = rest[:1], rest[1:]
        try:
            unspecified = ipaddress.IPv6Address(host).is_unspecified
        except ValueError:
            raise InvalidArgumentError(f"{what} {quote(value)}: not an IPv6 address") from None
    else:
        host, sep, port = value.rpartition(":")
        if not _HOSTNAME.fullmatch(host):
            raise InvalidArgumentError(f"{what} {quote(value)}: not a host name or IP address")
        try:
            unspecified = ipaddress.IPv4Address(host).is_unspecified
        except ValueError:  # a DNS name
            unspecified = False
    if unspecified:
        raise InvalidArgumentError(
            f"{what} {quote(value)} is a wildcard: advertise an address clients can dial"
        )
    if sep != ":" or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidArgumentError(f"{what} {quote(value)}: the port must be 1-65535")
    return value


def dial_address(host: str, port: int) -> str:
    """``host:port`` text for a host and port (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_dial_address(value: str) -> tuple[str, int]:
    """The host (brackets removed) and port of an address ``validate_dial_address`` took."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class ShardEntry:
    """One live shard: its id, where clients reach its gRPC and admin HTTP servers, when
    it started (Unix seconds) and the version it runs."""

    shard_id: str
    grpc_addr: str
    http_addr: str
    started_at: float
    version: str

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":")).encode()

    def as_dict(self) -> dict[str, Any]:
        return {
            "shard_id": self.shard_id,
            "grpc_addr": self.grpc_addr,
            "http_addr": self.http_addr,
            "started_at": self.started_at,
            "version": self.version,
        }


_FIELDS: Final = ("grpc_addr", "http_addr", "shard_id", "started_at", "version")


def validate_entry(value: object, *, key: str | None = None) -> ShardEntry:
    """Validate a decoded directory entry; ``key`` (the KV key) must equal its shard id.

    Raises:
        InvalidArgumentError: not an object of exactly the five fields, a bad shard id or
            address, a shard id that is not the key, a negative or non-numeric
            ``started_at``, or a version that is not short plain text.
    """
    if not isinstance(value, dict):
        raise InvalidArgumentError("shard directory entry must be a JSON object")
    if sorted(value) != list(_FIELDS):
        raise InvalidArgumentError(
            f"shard directory entry must have exactly the fields {', '.join(_FIELDS)}"
        )
    shard = value["shard_id"]
    if not isinstance(shard, str) or not TOKEN_PATTERN.fullmatch(shard):
        raise InvalidArgumentError(f"shard directory entry: shard id {quote(shard)} is invalid")
    if key is not None and shard != key:
        raise InvalidArgumentError(
            f"shard directory entry under key {quote(key)} names shard {quote(shard)}"
        )
    started = value["started_at"]
    if isinstance(started, bool) or not isinstance(started, (int, float)) or not started >= 0:
        raise InvalidArgumentError(
            f"shard directory entry {shard!r}: started_at must be Unix seconds"
        )
    version = value["version"]
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise InvalidArgumentError(f"shard directory entry {shard!r}: version is invalid")
    return ShardEntry(
        shard_id=shard,
        grpc_addr=validate_dial_address(value["grpc_addr"], f"shard {shard!r} grpc_addr"),
        http_addr=validate_dial_address(value["http_addr"], f"shard {shard!r} http_addr"),
        started_at=float(started),
        version=version,
    )


def parse_entry(raw: bytes, *, key: str | None = None) -> ShardEntry:
    """Parse and validate a directory entry read from KV.

    Raises:
        InvalidArgumentError: longer than ``MAX_ENTRY_BYTES``, not UTF-8 JSON, or refused
            by ``validate_entry``.
    """
    if len(raw) > MAX_ENTRY_BYTES:
        raise InvalidArgumentError(
            f"shard directory entry is {len(raw)} bytes, over the {MAX_ENTRY_BYTES}-byte limit"
        )
    try:
        decoded = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidArgumentError("shard directory entry is not UTF-8 JSON") from None
    return validate_entry(decoded, key=key)
