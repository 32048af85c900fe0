"""Identifiers: tenants, aggregate types, aggregate and command ids, versions.

Tenant and type tokens become NATS subject tokens and SQLite keys, so they are validated
once here and carried as plain ``str`` afterwards. Aggregate and command ids are UUIDs;
ids the service makes are UUIDv7 (time-ordered), which also lets the idempotency window
refuse a command id older than anything it can still de-duplicate (DESIGN §4.4).
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from dataclasses import dataclass

from aggregate.domain.errors import InvalidArgumentError, quote

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_TENANT = "_default"
"""The reserved tenant token of single-tenant mode (an empty subject token is invalid)."""


def validate_tenant_id(value: str) -> str:
    """Return ``value`` if it is a valid tenant id.

    Raises:
        InvalidArgumentError: it does not match ``[A-Za-z0-9_-]{1,64}``.
    """
    if not isinstance(value, str) or not TOKEN_PATTERN.fullmatch(value):
        raise InvalidArgumentError(
            f"tenant id {quote(value)} is invalid: use 1-64 characters of A-Z a-z 0-9 _ -"
        )
    return value


def validate_aggregate_type(value: str) -> str:
    """Return ``value`` if it is a valid aggregate type name.

    Raises:
        InvalidArgumentError: it does not match ``[A-Za-z0-9_-]{1,64}``.
    """
    if not isinstance(value, str) or not TOKEN_PATTERN.fullmatch(value):
        raise InvalidArgumentError(
            f"aggregate type {quote(value)} is invalid: use 1-64 characters of A-Z a-z 0-9 _ -"
        )
    return value


def parse_uuid(value: str, what: str) -> uuid.UUID:
    """Parse a UUID given as text, naming ``what`` in the error.

    Raises:
        InvalidArgumentError: ``value`` is not a UUID.
    """
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise InvalidArgumentError(f"{what} {quote(value)} is not a UUID") from None


_v7_lock = threading.Lock()
_v7_last = [0, 0]  # [unix ms, 12-bit counter] of the last id made in this process


def uuid7() -> uuid.UUID:
    """Make a UUIDv7 (RFC 9562): 48-bit unix milliseconds, then random bits.

    Ids made in one process are strictly increasing (a 12-bit counter in ``rand_a`` orders
    ids made within the same millisecond).
    """
    with _v7_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _v7_last[0]:
            ms = _v7_last[0]
            counter = _v7_last[1] + 1
            if counter > 0xFFF:
                ms += 1
                counter = 0
        else:
            counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        _v7_last[0], _v7_last[1] = ms, counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


def uuid7_at(ms: int, rand: int = 0) -> uuid.UUID:
    """A UUIDv7 with a chosen timestamp (tests and tools that replay history)."""
    value = (
        ((ms & ((1 << 48) - 1)) << 80)
        | (0x7 << 76)
        | ((rand >> 62) & 0xFFF) << 64
        | (0b10 << 62)
        | (rand & ((1 << 62) - 1))
    )
    return uuid.UUID(int=value)


def uuid7_timestamp_ms(value: uuid.UUID) -> int | None:
    """The unix-millisecond timestamp of a UUIDv7, or None for any other kind of UUID."""
    if value.version != 7 or value.variant != uuid.RFC_4122:
        return None
    return value.int >> 80


@dataclass(frozen=True, slots=True, order=True)
class AggregateKey:
    """Where an aggregate lives: every key in the system is scoped by tenant (DESIGN §6)."""

    tenant_id: str
    aggregate_type: str
    aggregate_id: uuid.UUID

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.aggregate_type}/{self.aggregate_id}"

    @property
    def subject(self) -> str:
        """The JetStream subject of this aggregate's messages (DESIGN §4.2)."""
        return f"tenant.{self.tenant_id}.aggregate.{self.aggregate_type}.{self.aggregate_id}"
