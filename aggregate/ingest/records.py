"""Usage records and batches: decoded once where they enter, with bounds (STYLE 21).

A batch is one ``UsageBatch {records: [UsageRecord]}`` document, TOML or JSON. A record
holds ``idempotency_key`` (the key it is charged once by), ``cost_cents`` (a non-negative
integer), ``user_sid`` (the account charged) and, optionally, ``node_name`` (the node that
wrote it; the source's node when absent) and ``recorded_at`` (text, kept for the index).
Other fields are ignored, as readers of the wire format ignore unknown fields.

Pure and synchronous: no I/O here. Ids are derived, not looked up: the ledger aggregate of
an account is ``uuid5(ACCOUNT_NAMESPACE, "<tenant>/<account>")`` and the command id of a
record is ``uuid5(RECORD_NAMESPACE, "<tenant>/<account>/<idempotency key>")``.
"""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from dataclasses import dataclass
from typing import Any

from aggregate.domain.errors import AggregateError, quote
from aggregate.domain.json_input import DEFAULT_MAX_INT_DIGITS, loads_json

ACCOUNT_NAMESPACE = uuid.UUID("6c1d0f0e-3b7a-5e34-9a51-0b6f2c8e4d10")
"""The UUIDv5 namespace of account ledger ids (fixed forever: changing it moves every
account to a new, empty aggregate)."""
RECORD_NAMESPACE = uuid.UUID("a4e7c2b9-58d1-5f0c-8e3a-7d29b16f0c5e")
"""The UUIDv5 namespace of the command ids of usage records (fixed forever)."""
MAX_KEY_CHARS = 256
MAX_ACCOUNT_CHARS = 128
MAX_TEXT_CHARS = 128
MAX_COST_CENTS = 2**53 - 1
"""The largest cost accepted: exact in every JSON reader, far beyond any real charge."""
NODE_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BadRecordError(AggregateError):
    """Raised when a batch or one of its records is malformed; ``index`` is the record's
    position in the batch (None: the batch itself is unreadable)."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One validated usage record."""

    idempotency_key: str
    cost_cents: int
    account: str
    node_name: str
    recorded_at: str | None = None

    def command_payload(self) -> dict[str, Any]:
        """The ledger command that charges this record (the billing example's
        ``RecordUsage``)."""
        return {
            "type": "RecordUsage",
            "idempotency_key": self.idempotency_key,
            "cost_cents": self.cost_cents,
            "node_name": self.node_name,
            "user_sid": self.account,
        }


def account_aggregate_id(tenant_id: str, account: str) -> uuid.UUID:
    """The ledger aggregate id of ``account`` under ``tenant_id`` (no lookup needed)."""
    return uuid.uuid5(ACCOUNT_NAMESPACE, f"{tenant_id}/{account}")


def record_command_id(tenant_id: str, record: UsageRecord) -> uuid.UUID:
    """The command id of ``record``: the same record always makes the same command."""
    return uuid.uuid5(RECORD_NAMESPACE, f"{tenant_id}/{record.account}/{record.idempotency_key}")


def _text(raw: dict[str, Any], name: str, limit: int, *, required: bool) -> str | None:
    value = raw.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    if len(value) > limit:
        raise ValueError(f"{name} is longer than {limit} characters")
    if _CONTROL.search(value):
        raise ValueError(f"{name} holds a control character")
    return value


def parse_record(raw: object, *, source_node: str) -> UsageRecord:
    """Validate one decoded record.

    Raises:
        ValueError: a field is missing or out of bounds (the message names it).
    """
    if not isinstance(raw, dict):
        raise ValueError("a record must be a table (an object)")
    key = _text(raw, "idempotency_key", MAX_KEY_CHARS, required=True)
    account = _text(raw, "user_sid", MAX_ACCOUNT_CHARS, required=True)
    cost = raw.get("cost_cents")
    if isinstance(cost, bool) or not isinstance(cost, int) or not 0 <= cost <= MAX_COST_CENTS:
        raise ValueError(f"cost_cents must be an integer from 0 to {MAX_COST_CENTS}")
    node = _text(raw, "node_name", 64, required=False) or source_node
    if not NODE_PATTERN.fullmatch(node):
        raise ValueError("node_name must be 1-64 characters of A-Z a-z 0-9 _ -")
    recorded_at = _text(raw, "recorded_at", MAX_TEXT_CHARS, required=False)
    assert key is not None
    assert account is not None
    return UsageRecord(key, cost, account, node, recorded_at)


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    """A batch's valid records, in order, and the first bad one (None: all valid)."""

    records: list[UsageRecord]
    error: BadRecordError | None = None


def decode_batch(data: bytes, *, fmt: str, max_records: int) -> list[object]:
    """Decode a ``UsageBatch`` document (``fmt`` is ``toml`` or ``json``) to its raw records.

    Raises:
        BadRecordError: not UTF-8, not valid TOML/JSON, no ``records`` list, too many records.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecordError(f"not UTF-8 text (byte {exc.start})") from None
    document: object
    if fmt == "toml":
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise BadRecordError(f"not valid TOML: {str(exc)[:120]}") from None
    elif fmt == "json":
        try:
            document = loads_json(
                text, what="usage batch", max_depth=8, max_int_digits=DEFAULT_MAX_INT_DIGITS
            )
        except AggregateError as exc:
            raise BadRecordError(exc.message) from None
        except json.JSONDecodeError as exc:  # pragma: no cover - loads_json translates
            raise BadRecordError(f"not valid JSON: {exc.msg}") from None
    else:
        raise BadRecordError(f"unknown batch format {quote(fmt)}")
    if not isinstance(document, dict) or not isinstance(document.get("records"), list):
        raise BadRecordError("a usage batch must hold a 'records' list (UsageBatch {records})")
    records: list[object] = document["records"]
    if len(records) > max_records:
        raise BadRecordError(
            f"the batch holds {len(records)} records, more than the limit of {max_records} "
            "(AGGREGATE_INGEST_MAX_RECORDS_PER_BATCH)"
        )
    return records


def parse_batch(data: bytes, *, fmt: str, source_node: str, max_records: int) -> ParsedBatch:
    """The valid records of a batch up to its first bad record (reported, not raised)."""
    try:
        raw_records = decode_batch(data, fmt=fmt, max_records=max_records)
    except BadRecordError as exc:
        return ParsedBatch([], exc)
    records: list[UsageRecord] = []
    for index, raw in enumerate(raw_records):
        try:
            records.append(parse_record(raw, source_node=source_node))
        except ValueError as exc:
            return ParsedBatch(records, BadRecordError(str(exc), index=index))
    return ParsedBatch(records)
