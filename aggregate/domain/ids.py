"""Identifiers: tenants, aggregate types, aggregate and command ids, versions.

Tenant and type tokens become NATS subject tokens and SQLite keys, so they are validated
once here and carried as plain ``str`` afterwards. Aggregate and command ids are UUIDs;
ids the service makes are UUIDv7 (time-ordered), which also lets the idempotency window
refuse a command id older than anything it can still de-duplicate (DESIGN §4.4).

An id is accepted only in the canonical form, 8-4-4-4-12 hex digits (either case):
``uuid.UUID`` alone also takes braces, ``urn:uuid:``, missing dashes, and (through ``int``)
signs, ``0x``, spaces, underscores and non-ASCII digits, so two different texts from a
client could otherwise name one aggregate.
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
UUID_TEXT = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
"""A UUID as ``str(uuid.UUID)`` writes it: 8-4-4-4-12 lower-case hex digits."""
_UUID = re.compile(UUID_TEXT, re.ASCII | re.IGNORECASE)
MAX_VERSION = 2**63 - 1
"""The largest version an aggregate can reach: snapshots keep versions in SQLite's signed
64-bit integers (and JetStream sequences, which bound the count of events, fit too)."""
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


UUID_TEXTS_KEPT = 4096
_uuid_texts: dict[int, str] = {}


def uuid_text(value: uuid.UUID) -> str:
    """``str(value)`` (the canonical lower-case text), remembered for the ids used lately
    (up to ``UUID_TEXTS_KEPT``, then afresh): one command renders its aggregate's id and its
    own id several times (subject, message id, headers, record body, watch buffer). Kept by
    the id's integer: a dict of integers and strings is out of the cyclic garbage
    collector's walks (``functools.lru_cache`` held a tuple and the ``UUID`` per entry,
    8,192 objects each full collection walked)."""
    number = value.int
    text = _uuid_texts.get(number)
    if text is None:
        if len(_uuid_texts) >= UUID_TEXTS_KEPT:
            _uuid_texts.clear()  # one step, whichever thread renders
        text = _uuid_texts[number] = str(value)
    return text


def canonical_uuid_text(value: object) -> str | None:
    """``value`` as ``str(uuid.UUID)`` writes it (lower case) when it is a UUID in the
    canonical 8-4-4-4-12 hex form, either case; else None."""
    if isinstance(value, str) and _UUID.fullmatch(value):
        return value.lower()
    return None


def canonical_uuid(value: object) -> uuid.UUID | None:
    """The UUID ``value`` spells in the canonical 8-4-4-4-12 hex form (either case), or
    None for anything else (see the module's docstring)."""
    if isinstance(value, str) and _UUID.fullmatch(value):
        return uuid.UUID(value)
    return None


def parse_uuid(value: str, what: str) -> uuid.UUID:
    """Parse a UUID a client gave as text, naming ``what`` in the error.

    Raises:
        InvalidArgumentError: ``value`` is not a UUID in the canonical form.
    """
    parsed = canonical_uuid(value)
    if parsed is None:
        raise InvalidArgumentError(
            f"{what} {quote(value)} is not a UUID: use the canonical form of 32 hex digits "
            "in groups 8-4-4-4-12, e.g. 0190f3c2-7a4b-7c3d-8e5f-1a2b3c4d5e6f"
        )
    return parsed


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
        aggregate_id = uuid_text(self.aggregate_id)
        return f"tenant.{self.tenant_id}.aggregate.{self.aggregate_type}.{aggregate_id}"
