"""Command, event, stored-message and snapshot envelopes, and their JSON wire forms.

One NATS message holds all the events of one command (DESIGN §4.2): ``CommandRecord`` is
that message's body. Readers are tolerant: unknown fields are ignored, but fields the
service relies on are checked and a record read under the wrong key is refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aggregate.domain.context import RequestContext
from aggregate.domain.errors import (
    CorruptDataError,
    InvalidArgumentError,
    TenantAccessDeniedError,
    quote,
)
from aggregate.domain.ids import AggregateKey, canonical_uuid, uuid7
from aggregate.domain.json_input import DEFAULT_MAX_DEPTH, DEFAULT_MAX_INT_DIGITS, loads_json

if TYPE_CHECKING:
    import uuid
    from collections.abc import Mapping, Sequence

JsonObject = dict[str, Any]


def utc_now_rfc3339() -> str:
    """Now, as RFC 3339 UTC with milliseconds (``2026-01-02T03:04:05.678Z``)."""
    now = time.time()
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(now))}.{int(now * 1000) % 1000:03d}Z"


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> bytes:
    """Compact JSON; integers stay exact (Python ints are arbitrary precision)."""
    return _ENCODER.encode(value).encode()


def _stored_uuid(value: object) -> uuid.UUID:
    """An id read back from stored data: the service writes only the canonical form.

    Raises:
        ValueError: anything else (callers turn it into ``CorruptDataError``).
    """
    parsed = canonical_uuid(value)
    if parsed is None:
        raise ValueError(f"{quote(value)} is not a UUID in the canonical form")
    return parsed


@dataclass(frozen=True, slots=True)
class Command:
    """A command for one aggregate; ``payload`` is a JSON object with a string ``type``."""

    key: AggregateKey
    command_id: uuid.UUID
    payload: JsonObject
    context: RequestContext = field(default_factory=RequestContext.new)
    metadata: Mapping[str, str] = field(default_factory=dict)
    expected_version: int | None = None

    @property
    def command_type(self) -> str:
        return str(self.payload["type"])


def parse_command_payload(
    payload_json: str | bytes,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_int_digits: int = DEFAULT_MAX_INT_DIGITS,
) -> JsonObject:
    """Decode a command payload: a JSON object with a non-empty string ``type``, within the
    bounds of ``loads_json``.

    Raises:
        InvalidArgumentError: not JSON, out of bounds, not an object, or no string ``type``.
    """
    value = loads_json(
        payload_json, what="payload_json", max_depth=max_depth, max_int_digits=max_int_digits
    )
    if not isinstance(value, dict):
        raise InvalidArgumentError("payload_json must be a JSON object")
    kind = value.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidArgumentError('payload_json must have a non-empty string "type"')
    return value


@dataclass(frozen=True, slots=True)
class Event:
    """One event; ``version`` is the aggregate's version after it (1, 2, 3, ...)."""

    event_id: uuid.UUID
    event_type: str
    version: int
    payload: JsonObject
    timestamp: str

    def as_program_value(self) -> JsonObject:
        """The value ``apply`` receives: ``{"type": event_type, **payload}``."""
        return {**self.payload, "type": self.event_type}

    def to_json(self) -> JsonObject:
        return {
            "event_id": str(self.event_id),
            "event_type": self.event_type,
            "version": self.version,
            "payload": self.payload,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_json(cls, value: Any) -> Event:
        if not isinstance(value, dict):
            raise CorruptDataError("event is not a JSON object")
        try:
            event_type = value["event_type"]
            version = value["version"]
            payload = value.get("payload", {})
            if not isinstance(event_type, str) or not isinstance(version, int):
                raise TypeError
            if not isinstance(payload, dict):
                raise TypeError
            return cls(
                event_id=_stored_uuid(value["event_id"]),
                event_type=event_type,
                version=version,
                payload=payload,
                timestamp=str(value.get("timestamp", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(f"malformed event: {exc}") from None


def events_from_decision(
    decided: Sequence[Any], *, first_version: int, timestamp: str | None = None
) -> tuple[Event, ...]:
    """Turn the values ``decide`` returned into numbered events.

    Raises:
        InvalidArgumentError: a value is not an object with a non-empty string ``type``.
    """
    stamp = timestamp or utc_now_rfc3339()
    events = []
    for offset, value in enumerate(decided):
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("type"), str)
            or not value["type"]
        ):
            raise InvalidArgumentError(
                f"decide returned event #{offset} {quote(value)}: each event must be an object "
                'with a non-empty string "type"'
            )
        payload = {k: v for k, v in value.items() if k != "type"}
        events.append(Event(uuid7(), value["type"], first_version + offset, payload, stamp))
    return tuple(events)


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """The body of one JetStream message: every event of one command, in order."""

    key: AggregateKey
    command_id: uuid.UUID
    correlation_id: str
    trace_id: str
    first_version: int
    events: tuple[Event, ...]

    @property
    def last_version(self) -> int:
        return self.first_version + len(self.events) - 1

    @property
    def message_id(self) -> str:
        """The ``Nats-Msg-Id`` of this record: the command id scoped by the aggregate's
        subject. JetStream de-duplicates message ids across the whole stream, so a bare
        command id reused by another aggregate (or another tenant) would be silently
        dropped as a duplicate; scoped, one aggregate can never affect another."""
        return f"{self.key.subject}.{self.command_id}"

    def to_json(self) -> JsonObject:
        return {
            "tenant_id": self.key.tenant_id,
            "aggregate_type": self.key.aggregate_type,
            "aggregate_id": str(self.key.aggregate_id),
            "command_id": str(self.command_id),
            "correlation_id": self.correlation_id,
            "trace_id": self.trace_id,
            "first_version": self.first_version,
            "events": [event.to_json() for event in self.events],
        }

    def encode(self) -> bytes:
        return dumps(self.to_json())

    def headers(self, *, expected_last_seq: int, context: RequestContext) -> dict[str, str]:
        """The headers of the message that stores this record (DESIGN §4.2, §8); every
        event store writes exactly these."""
        headers = context.nats_headers(self.key.tenant_id)
        headers.update(
            {
                "Nats-Msg-Id": self.message_id,
                "Nats-Expected-Last-Subject-Sequence": str(expected_last_seq),
                "command-id": str(self.command_id),
                "aggregate-type": self.key.aggregate_type,
                "aggregate-id": str(self.key.aggregate_id),
                "version": str(self.last_version),
                "content-type": "application/json",
            }
        )
        return headers

    @classmethod
    def decode(cls, data: bytes, *, expected_key: AggregateKey) -> CommandRecord:
        """Decode a message body read under ``expected_key``.

        Raises:
            TenantAccessDeniedError: the body names another tenant (corruption or forgery).
            CorruptDataError: the body is not a well-formed record of this aggregate.
        """
        try:
            value = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise CorruptDataError(f"message of {expected_key} is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise CorruptDataError(f"message of {expected_key} is not a JSON object")
        if value.get("tenant_id") != expected_key.tenant_id:
            raise TenantAccessDeniedError(
                f"message read under tenant {expected_key.tenant_id!r} belongs to tenant "
                f"{quote(value.get('tenant_id'))}"
            )
        try:
            key = AggregateKey(
                value["tenant_id"], value["aggregate_type"], _stored_uuid(value["aggregate_id"])
            )
            events_json = value["events"]
            first_version = value["first_version"]
            if not isinstance(events_json, list) or not events_json:
                raise TypeError("events must be a non-empty list")
            if not isinstance(first_version, int) or first_version < 1:
                raise TypeError("first_version must be a positive integer")
            record = cls(
                key=key,
                command_id=_stored_uuid(value["command_id"]),
                correlation_id=str(value.get("correlation_id", "")),
                trace_id=str(value.get("trace_id", "")),
                first_version=first_version,
                events=tuple(Event.from_json(e) for e in events_json),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptDataError(f"malformed message of {expected_key}: {exc}") from None
        if key != expected_key:
            raise CorruptDataError(f"message of {key} was read under {expected_key}")
        for offset, event in enumerate(record.events):
            if event.version != first_version + offset:
                raise CorruptDataError(
                    f"message of {key} has event version {event.version}, "
                    f"expected {first_version + offset}"
                )
        return record


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A ``CommandRecord`` with the stream sequence it was stored at."""

    seq: int
    record: CommandRecord


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The answer to a command: the aggregate's version after it and its events.

    ``duplicate`` is true when the command id had been applied before; the events and
    version are then the original ones. ``position`` is the stream sequence of the
    command's message (a duplicate: of the original message; a command that decided no
    events: of the aggregate's last message, 0 when it has none).
    """

    key: AggregateKey
    command_id: uuid.UUID
    version: int
    events: tuple[Event, ...]
    duplicate: bool = False
    position: int = 0


@dataclass(frozen=True, slots=True)
class AggregateView:
    """An aggregate's current state and version (``GetAggregate``); ``position`` is the
    stream sequence of its last message."""

    key: AggregateKey
    version: int
    state: JsonObject
    position: int = 0
