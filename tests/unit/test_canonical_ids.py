"""Canonical ids wherever one enters: requests, stored messages, snapshots."""

from __future__ import annotations

import json
import uuid

import pytest

from aggregate.adapters.sqlite_snapshot_file import decode_row
from aggregate.domain.envelopes import CommandRecord, events_from_decision
from aggregate.domain.errors import (
    CorruptDataError,
    InvalidArgumentError,
)
from aggregate.domain.ids import (
    AggregateKey,
    canonical_uuid,
    canonical_uuid_text,
    parse_uuid,
    uuid7,
)

ID = uuid.UUID("0190f3c2-7a4b-7c3d-8e5f-1a2b3c4d5e6f")
KEY = AggregateKey("acme", "bank-account", ID)

NOT_CANONICAL = [
    " 2222222-2222-2222-2222-222222222222",  # uuid.UUID: 02222222-...
    "2222222-2222-2222-2222-2222222222222",  # dashes moved
    "0x333333-3333-3333-3333-333333333333",  # int(..., 16) takes 0x
    "+1111111-1111-1111-1111-111111111111",  # ... and a sign
    "1111_111-1111-1111-1111-111111111111",  # ... and underscores
    "-".join("\u0661" * n for n in (8, 4, 4, 4, 12)),  # ... and Arabic-Indic digits
    "-".join("\uff11" * n for n in (8, 4, 4, 4, 12)),  # ... and full-width ones
    "uuid:44444444-4444-4444-4444-444444444444",
    "urn:uuid:44444444-4444-4444-4444-444444444444",
    "{44444444-4444-4444-4444-444444444444}",
    "44444444444444444444444444444444",
    "44444444-4444-4444-4444-444444444444\n",
    "44444444-4444-4444-4444-44444444444g",
    "",
]


@pytest.mark.parametrize("text", [str(ID), str(ID).upper(), "0190F3C2-7a4b-7C3D-8e5f-1A2B3c4d5e6f"])
def test_canonical_ids_of_either_case_are_accepted(text: str) -> None:
    assert parse_uuid(text, "aggregate_id") == ID
    assert canonical_uuid(text) == ID
    assert canonical_uuid_text(text) == str(ID)


@pytest.mark.parametrize("text", NOT_CANONICAL)
def test_other_spellings_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        parse_uuid(text, "command_id")
    assert caught.value.message.startswith(f"command_id {text!r} is not a UUID")
    assert "8-4-4-4-12" in caught.value.message
    assert canonical_uuid(text) is None
    assert canonical_uuid_text(text) is None


def test_non_strings_are_no_ids() -> None:
    assert canonical_uuid(ID) is None
    assert canonical_uuid(None) is None
    with pytest.raises(InvalidArgumentError):
        parse_uuid(7, "id")  # type: ignore[arg-type]


def stored_body(**changes: object) -> bytes:
    record = CommandRecord(
        key=KEY,
        command_id=uuid7(),
        correlation_id="c",
        trace_id="t",
        first_version=1,
        events=events_from_decision([{"type": "A"}], first_version=1),
    )
    body = record.to_json()
    for name, value in changes.items():
        if name == "event_id":
            body["events"][0]["event_id"] = value
        else:
            body[name] = value
    return json.dumps(body).encode()


def test_a_stored_message_in_upper_case_reads_the_same() -> None:
    body = stored_body(aggregate_id=str(ID).upper(), command_id=str(ID).upper())
    record = CommandRecord.decode(body, expected_key=KEY)
    assert (record.key, record.command_id) == (KEY, ID)


@pytest.mark.parametrize("field", ["aggregate_id", "command_id", "event_id"])
@pytest.mark.parametrize("text", [f"{{{ID}}}", ID.hex, f"urn:uuid:{ID}", f" {ID}"])
def test_a_stored_message_with_another_spelling_is_corrupt(field: str, text: str) -> None:
    with pytest.raises(CorruptDataError, match="is not a UUID in the canonical form"):
        CommandRecord.decode(stored_body(**{field: text}), expected_key=KEY)


def test_a_stored_message_nested_beyond_the_parser_is_corrupt() -> None:
    with pytest.raises(CorruptDataError, match="is not JSON"):
        CommandRecord.decode(b"[" * 100_000, expected_key=KEY)


def test_a_snapshot_row_with_another_spelling_is_corrupt() -> None:
    history = '{"horizon_ms":0,"entries":[]}'
    row = ("acme", "bank-account", str(ID), 1, 1, "{}", history, "2026-01-01T00:00:00Z")
    assert decode_row(row).key == KEY
    with pytest.raises(CorruptDataError, match="canonical form"):
        decode_row(("acme", "bank-account", ID.hex, *row[3:]))
