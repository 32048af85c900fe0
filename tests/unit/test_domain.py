"""Pure domain: ids, context, envelopes, command history, the aggregate instance."""

from __future__ import annotations

import gc
import json
import uuid

import pytest

from aggregate.domain.aggregate import AggregateInstance, Snapshot
from aggregate.domain.context import RequestContext, valid_traceparent
from aggregate.domain.envelopes import (
    CommandRecord,
    StoredRecord,
    events_from_decision,
    parse_command_payload,
)
from aggregate.domain.errors import (
    CommandIdTooOldError,
    CorruptDataError,
    InvalidArgumentError,
    TenantAccessDeniedError,
)
from aggregate.domain.history import CommandHistory, FrozenHistory, HistoryEntry
from aggregate.domain.ids import (
    AggregateKey,
    parse_uuid,
    uuid7,
    uuid7_at,
    uuid7_timestamp_ms,
    validate_aggregate_type,
    validate_tenant_id,
)

KEY = AggregateKey("acme", "bank-account", uuid.UUID(int=1))


def record(first_version: int, *types: str, key: AggregateKey = KEY) -> CommandRecord:
    return CommandRecord(
        key=key,
        command_id=uuid7(),
        correlation_id="c",
        trace_id="t",
        first_version=first_version,
        events=events_from_decision([{"type": t} for t in types], first_version=first_version),
    )


@pytest.mark.parametrize("good", ["a", "acme-corp_1", "_default", "x" * 64])
def test_valid_tokens(good: str) -> None:
    assert validate_tenant_id(good) == good
    assert validate_aggregate_type(good) == good


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "a*", "x" * 65, "é"])
def test_invalid_tokens_name_the_value(bad: str) -> None:
    with pytest.raises(InvalidArgumentError, match="tenant id"):
        validate_tenant_id(bad)
    with pytest.raises(InvalidArgumentError, match="aggregate type"):
        validate_aggregate_type(bad)


def test_uuid7_is_v7_time_ordered_and_unique() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert uuid7_timestamp_ms(uuid7_at(1234567, 99)) == 1234567
    assert uuid7_timestamp_ms(uuid.uuid4()) is None


def test_parse_uuid_names_the_field() -> None:
    with pytest.raises(InvalidArgumentError, match="command_id 'nope' is not a UUID"):
        parse_uuid("nope", "command_id")


def test_subject_is_tenant_scoped() -> None:
    assert KEY.subject == f"tenant.acme.aggregate.bank-account.{KEY.aggregate_id}"


def test_context_keeps_valid_values_and_generates_the_rest() -> None:
    tp = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    ctx = RequestContext.from_headers({"X-Correlation-Id": "corr-1", "traceparent": tp})
    assert ctx.correlation_id == "corr-1"
    assert ctx.traceparent == tp
    assert ctx.trace_id == "ab" * 16
    assert ctx.request_id  # generated
    bad = RequestContext.from_headers({"traceparent": "00-" + "0" * 32 + "-" + "1" * 16 + "-01"})
    assert valid_traceparent(bad.traceparent)
    assert bad.traceparent != tp
    headers = ctx.nats_headers("acme")
    assert headers["tenant-id"] == "acme"
    assert headers["x-correlation-id"] == headers["correlation-id"] == "corr-1"
    assert headers["trace-id"] == "ab" * 16
    assert headers["x-request-id"] == ctx.request_id


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('{"amount": 1}', 'non-empty string "type"'),
        ('{"type": ""}', 'non-empty string "type"'),
    ],
)
def test_bad_payloads_are_invalid_arguments(payload: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        parse_command_payload(payload)


def test_payload_integers_stay_exact() -> None:
    big = 2**70 + 1
    assert parse_command_payload(json.dumps({"type": "X", "n": big}))["n"] == big


def test_record_round_trip_and_tolerant_decoding() -> None:
    rec = record(3, "A", "B")
    body = rec.to_json()
    body["added_later"] = {"x": 1}  # unknown fields are ignored
    decoded = CommandRecord.decode(json.dumps(body).encode(), expected_key=KEY)
    assert decoded == rec
    assert decoded.last_version == 4


def test_record_of_another_tenant_is_refused() -> None:
    other = AggregateKey("globex", KEY.aggregate_type, KEY.aggregate_id)
    with pytest.raises(TenantAccessDeniedError, match="belongs to tenant 'globex'"):
        CommandRecord.decode(record(1, "A", key=other).encode(), expected_key=KEY)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(events=[]),
        lambda b: b.update(first_version=0),
        lambda b: b["events"][0].update(version=9),
        lambda b: b.update(aggregate_id=str(uuid.UUID(int=2))),
        lambda b: b.pop("command_id"),
    ],
)
def test_malformed_records_are_corrupt(mutate: object) -> None:
    body = record(1, "A").to_json()
    mutate(body)  # type: ignore[operator]
    with pytest.raises(CorruptDataError):
        CommandRecord.decode(json.dumps(body).encode(), expected_key=KEY)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.update(aggregate_type="other-type"), "was read under"),
        (lambda b: b.pop("aggregate_type"), "aggregate_type"),
        (lambda b: b.pop("aggregate_id"), "aggregate_id"),
        (lambda b: b.update(aggregate_id=1), "not a UUID"),
        (lambda b: b.update(aggregate_id=str(KEY.aggregate_id).replace("-", "")), "not a UUID"),
    ],
)
def test_records_of_another_aggregate_or_without_one_are_corrupt(
    mutate: object, message: str
) -> None:
    body = record(1, "A").to_json()
    mutate(body)  # type: ignore[operator]
    with pytest.raises(CorruptDataError, match=message):
        CommandRecord.decode(json.dumps(body).encode(), expected_key=KEY)


def test_record_decodes_against_keys_of_many_aggregates_in_turn() -> None:
    keys = [AggregateKey("acme", "bank-account", uuid7()) for _ in range(3)]
    bodies = [record(1, "A", key=k).encode() for k in keys]
    for _ in range(2):
        for k, body in zip(keys, bodies, strict=True):
            assert CommandRecord.decode(body, expected_key=k).key == k
            other = keys[(keys.index(k) + 1) % 3]
            with pytest.raises(CorruptDataError, match="was read under"):
                CommandRecord.decode(body, expected_key=other)


def test_record_with_an_upper_case_aggregate_id_reads_as_its_key() -> None:
    body = record(1, "A").to_json()
    body["aggregate_id"] = body["aggregate_id"].upper()
    assert CommandRecord.decode(json.dumps(body).encode(), expected_key=KEY).key == KEY


def test_decided_events_must_have_a_type() -> None:
    with pytest.raises(InvalidArgumentError, match="event #1"):
        events_from_decision([{"type": "A"}, {"amount": 1}], first_version=1)


def test_history_forgets_oldest_and_refuses_v7_ids_before_the_horizon() -> None:
    history = CommandHistory(limit=2)
    ids = [uuid7_at(1000 + i, i) for i in range(3)]
    for n, cid in enumerate(ids):
        history.remember(HistoryEntry(cid, n + 1, n + 1, n + 1))
    assert history.lookup(ids[0]) is None
    assert history.horizon_ms == 1000
    with pytest.raises(CommandIdTooOldError, match="too old to de-duplicate"):
        history.check_new(uuid7_at(999, 7))
    history.check_new(uuid7_at(1001, 7))  # after the horizon: never forgotten, so new
    history.check_new(uuid.uuid4())  # non-v7 ids are only de-duplicated within the window
    restored = CommandHistory.from_json(history.to_json(), limit=2)
    assert restored.entries() == history.entries()
    assert restored.horizon_ms == 1000


def test_history_json_text_is_its_json() -> None:
    # Snapshots store the text joined from each entry's cached rendering.
    history = CommandHistory(limit=50)
    for n in range(30):
        cid = uuid7_at(1000 + n, n) if n % 2 else uuid.uuid4()
        history.remember(HistoryEntry(cid, 2 * n + 1, 2 * n + 2, 10**12 + n))
    history.remember(HistoryEntry(uuid7_at(5000), 61, 61, 99))
    frozen = history.freeze()
    text = frozen.to_json_text()
    assert json.loads(text) == frozen.to_json()
    assert text == json.dumps(frozen.to_json(), separators=(",", ":"))
    assert FrozenHistory.from_json(json.loads(text)) == frozen
    assert FrozenHistory.from_json_text(text) == frozen
    looked_up = CommandHistory.thaw(FrozenHistory.from_json_text(text), limit=50)
    assert looked_up.entries() == history.entries()
    empty = CommandHistory(limit=5).freeze()
    assert json.loads(empty.to_json_text()) == {"horizon_ms": 0, "entries": []}


def test_history_rows_are_invisible_to_the_garbage_collector() -> None:
    # A full cache holds millions of remembered commands: none of them may be an object the
    # cyclic collector has to walk (its full collections would pause the service).
    history = CommandHistory(limit=100)
    for n in range(150):
        history.remember(HistoryEntry(uuid7(), n + 1, n + 1, n + 1))
    gc.collect()
    rows = list(history._rows.items())
    assert len(rows) == 100
    assert not any(gc.is_tracked(key) or gc.is_tracked(row) for key, row in rows)
    thawed = CommandHistory.from_json(json.loads(history.freeze().to_json_text()), limit=100)
    gc.collect()
    assert not any(gc.is_tracked(row) for row in thawed._rows.values())
    assert thawed.entries() == history.entries()


def test_history_horizon_follows_forgotten_v7_ids_only() -> None:
    history = CommandHistory(limit=1)
    history.remember(HistoryEntry(uuid7_at(7_000, 3), 1, 1, 1))
    history.remember(HistoryEntry(uuid.uuid4(), 2, 2, 2))  # forgets the v7 id
    assert history.horizon_ms == uuid7_timestamp_ms(uuid7_at(7_000, 3)) == 7_000
    history.remember(HistoryEntry(uuid7_at(9_000), 3, 3, 3))  # forgets the v4 id
    assert history.horizon_ms == 7_000


def test_history_reads_canonical_ids_of_either_case_only() -> None:
    cid = uuid.uuid4()
    stored = {"horizon_ms": 5, "entries": [[str(cid).upper(), 1, 2, 3]]}
    frozen = FrozenHistory.from_json(stored)
    assert [e.command_id for e in frozen.entries] == [cid]
    assert json.loads(frozen.to_json_text())["entries"][0] == [str(cid), 1, 2, 3]
    for text in ("0" * 8 + "-" + "g" * 27, f"{{{cid}}}", cid.hex, f"urn:uuid:{cid}", f" {cid}"):
        with pytest.raises(CorruptDataError, match="malformed command history entry"):
            FrozenHistory.from_json({"entries": [[text, 1, 1, 1]]})


def test_history_text_in_another_layout_reads_the_same() -> None:
    history = CommandHistory(limit=10)
    for n in range(4):
        history.remember(HistoryEntry(uuid7_at(1000 + n, n), n + 1, n + 1, 40 + n))
    frozen = history.freeze()
    value = frozen.to_json()
    for text in (
        json.dumps(value),  # spaces
        json.dumps({"entries": value["entries"], "horizon_ms": 0}),  # key order
        json.dumps(value, separators=(",", ":"))
        .upper()
        .replace('"HORIZON_MS"', '"horizon_ms"')
        .replace('"ENTRIES"', '"entries"'),  # upper-case ids
    ):
        assert FrozenHistory.from_json_text(text) == frozen
    empty = FrozenHistory.from_json_text('{"horizon_ms":0,"entries":[]}')
    assert empty == FrozenHistory((), 0)
    fast = frozen.to_json_text()
    for bad in (fast[:-3] + ",]}", fast[:-1], fast.replace(",2,2,", ",2,x,"), "[]", "{"):
        with pytest.raises(CorruptDataError, match="malformed command history"):
            FrozenHistory.from_json_text(bad)


def test_history_entry_with_a_non_integer_version_is_corrupt() -> None:
    cid = str(uuid.uuid4())
    for bad in ([cid, True, 1, 1], [cid, 1, 1.0, 1], [cid, 1, 1, "1"], [cid, 1, 1]):
        with pytest.raises(CorruptDataError, match="malformed command history entry"):
            HistoryEntry.from_json(bad)


def test_no_horizon_until_something_is_forgotten() -> None:
    history = CommandHistory(limit=5)
    history.remember(HistoryEntry(uuid7_at(5000), 1, 1, 1))
    history.check_new(uuid7_at(1))  # nothing forgotten: an old-looking id is still new


def test_instance_accepts_only_its_next_record() -> None:
    inst = AggregateInstance.new(KEY, {}, history_limit=10)
    inst.accept(5, record(1, "A", "B"), {"n": 2})
    assert (inst.version, inst.last_seq, inst.state) == (2, 5, {"n": 2})
    with pytest.raises(CorruptDataError, match="starts at version 2"):
        inst.accept(6, record(2, "C"), {})
    with pytest.raises(CorruptDataError, match="not after"):
        inst.accept(5, record(3, "C"), {})
    other = AggregateKey("globex", KEY.aggregate_type, KEY.aggregate_id)
    with pytest.raises(TenantAccessDeniedError):
        inst.accept(9, record(3, "C", key=other), {})
    assert inst.version == 2


def test_advance_checks_every_record_before_changing_anything() -> None:
    inst = AggregateInstance.new(KEY, {}, history_limit=10)
    batch = [StoredRecord(1, record(1, "A")), StoredRecord(2, record(3, "B"))]
    with pytest.raises(CorruptDataError):
        inst.advance(batch, {"changed": True})
    assert (inst.version, inst.last_seq, inst.state, len(inst.history)) == (0, 0, {}, 0)


def test_snapshot_round_trip_and_tenant_check() -> None:
    inst = AggregateInstance.new(KEY, {}, history_limit=3)
    rec = record(1, "A")
    inst.accept(1, rec, {"n": 1})
    snap = inst.snapshot()
    inst.accept(2, record(2, "B"), {"n": 99})  # states are replaced, never changed in place
    again = AggregateInstance.from_snapshot(snap, key=KEY, history_limit=3)
    assert (again.version, again.last_seq, again.state) == (1, 1, {"n": 1})
    assert again.lookup(rec.command_id) == HistoryEntry(rec.command_id, 1, 1, 1)
    other = AggregateKey("globex", KEY.aggregate_type, KEY.aggregate_id)
    forged = Snapshot(other, 1, 1, {}, snap.history, snap.created_at)
    with pytest.raises(TenantAccessDeniedError):
        AggregateInstance.from_snapshot(forged, key=KEY, history_limit=3)


def test_timestamps_render_each_millisecond_across_second_boundaries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import datetime

    from aggregate.domain import envelopes

    for now in (1767323045.678, 1767323045.999, 1767323046.0, 1767323046.001, 100.5, 100.25):
        monkeypatch.setattr(envelopes.time, "time", lambda now=now: now)
        millis = int(now * 1000)
        at = datetime.datetime.fromtimestamp(millis // 1000, datetime.UTC)
        expected = f"{at:%Y-%m-%dT%H:%M:%S}.{millis % 1000:03d}Z"
        assert envelopes.utc_now_rfc3339() == expected
    assert envelopes.utc_now_rfc3339() == "1970-01-01T00:01:40.250Z"


def test_uuid_text_is_the_canonical_text() -> None:
    from aggregate.domain.ids import uuid_text

    ids = [uuid7() for _ in range(3)] + [uuid.UUID(int=2**128 - 1)]
    for one in ids * 2:
        assert uuid_text(one) == str(one)
    key = AggregateKey("acme", "bank-account", ids[0])
    assert key.subject == f"tenant.acme.aggregate.bank-account.{ids[0]}"


def test_uuid_texts_are_remembered_within_a_bound_and_out_of_the_collectors_walks() -> None:
    from aggregate.domain import ids

    many = [uuid.UUID(int=n) for n in range(3 * ids.UUID_TEXTS_KEPT)]
    gc.collect()
    before = len(gc.get_objects())
    assert all(ids.uuid_text(one) == str(one) for one in many)
    assert len(ids._uuid_texts) <= ids.UUID_TEXTS_KEPT
    gc.collect()
    assert len(gc.get_objects()) - before < 100, "the remembered texts are walked by the GC"
