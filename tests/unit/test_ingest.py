"""The ingestor on the real ledger program and handler, with in-memory stores: each
idempotency key is charged once, progress skips what is consumed, bad input halts only its
source."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import nats.errors
import pytest

from aggregate.application.handler import CommandHandler
from aggregate.domain.errors import BackendUnavailableError
from aggregate.domain.ids import AggregateKey
from aggregate.ingest.charge import Charger, IngestOptions, SourceRun
from aggregate.ingest.jetstream_source import JetStreamSource
from aggregate.ingest.jetstream_source import _consume as consume_jetstream
from aggregate.ingest.records import account_aggregate_id, parse_batch
from aggregate.ingest.runner import Ingestor
from aggregate.ingest.sources import DirectoryRoot, parse_sources
from aggregate.testing.memory_ingest import (
    InMemoryConsumedIndex,
    InMemoryProgressStore,
    billing_handler,
)
from aggregate.testing.memory_store import InMemoryEventStore

pytestmark = pytest.mark.anyio
TENANT = "acme"


def FOREVER_STORE() -> InMemoryEventStore:
    """No duplicate window (and a one-command history in the handlers below): repeats reach
    the ledger's own check, the one that holds forever."""
    return InMemoryEventStore(duplicate_window_s=0)


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def rec(key: str, cost: int, account: str, **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key, "cost_cents": cost, "user_sid": account, **extra}


def toml_batch(records: list[dict[str, Any]]) -> str:
    out = []
    for r in records:
        out.append("[[records]]")
        out.extend(f"{k} = {json.dumps(v)}" for k, v in r.items())
    return "\n".join(out) + "\n"


def write(root: Path, node: str, name: str, records: list[dict[str, Any]]) -> Path:
    path = root / "nodes" / node / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".json"):
        path.write_text(json.dumps({"records": records}))
    else:
        path.write_text(toml_batch(records))
    return path


class Rig:
    def __init__(self, root: Path, handler: CommandHandler | None = None, **kw: Any) -> None:
        self.root = root
        self.handler = handler or billing_handler(FOREVER_STORE(), history_limit=1)
        self.progress = kw.pop("progress", InMemoryProgressStore())
        self.index = kw.pop("index", InMemoryConsumedIndex())
        self.ingestor = Ingestor(
            handler=self.handler,
            sources=[DirectoryRoot(root, TENANT)],
            progress=self.progress,
            index=self.index,
            options=IngestOptions(default_tenant=TENANT, concurrency=4, **kw),
        )

    async def balance(self, account: str) -> int:
        key = AggregateKey(TENANT, "billing-account", account_aggregate_id(TENANT, account))
        view = await self.handler.get(key)
        return int(view.state["balance_cents"])


async def test_the_reference_smoke(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    write(tmp_path, "A", "usage_2026-01-01-00.toml", [rec("a1", 100, "ann"), rec("a2", 50, "bob")])
    write(tmp_path, "A", "usage_2026-01-01-01.toml", [rec("a3", 7, "ann"), rec("a1", 100, "ann")])
    write(tmp_path, "B", "usage_2026-01-01-00.json", [rec("b1", 30, "bob")])

    first = (await rig.ingestor.run_once()).as_dict()
    assert first["ok"], first
    assert (first["charged"], first["already_charged"]) == (4, 1)  # a1 repeated: once
    assert await rig.balance("ann") == -107
    assert await rig.balance("bob") == -80
    assert {k for _, k in rig.index.entries} == {"a1", "a2", "a3", "b1"}

    second = (await rig.ingestor.run_once()).as_dict()
    assert [s["status"] for s in second["sources"]] == ["skipped", "skipped"]
    assert second["charged"] == second["already_charged"] == 0

    write(tmp_path, "A", "usage_2026-01-01-02.toml", [rec("a4", 5, "bob")])
    third = (await rig.ingestor.run_once()).as_dict()
    assert [(s["source"], s["status"], s["records_read"]) for s in third["sources"]] == [
        ("A", "consumed", 1),
        ("B", "skipped", 0),
    ]
    assert await rig.balance("bob") == -85


async def test_a_bad_record_halts_its_source_and_a_fix_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    bad = [rec("a1", 10, "ann"), rec("a2", -5, "ann"), rec("a3", 1, "ann")]
    path = write(tmp_path, "A", "usage_2026-01-01-00.toml", bad)
    write(tmp_path, "A", "usage_2026-01-01-01.toml", [rec("a4", 100, "ann")])
    write(tmp_path, "B", "usage_2026-01-01-00.toml", [rec("b1", 3, "bob")])

    summary = (await rig.ingestor.run_once()).as_dict()
    assert not summary["ok"]
    a, b = summary["sources"]
    assert (a["status"], b["status"]) == ("halted", "consumed")
    assert a["error"]["file"] == "usage_2026-01-01-00.toml"
    assert a["error"]["record_index"] == 1
    assert "cost_cents" in a["error"]["reason"]
    assert await rig.balance("ann") == -10  # a1 only; a4's file waits behind the halt
    assert await rig.balance("bob") == -3

    again = (await rig.ingestor.run_once()).as_dict()
    assert again["sources"][0]["status"] == "halted"  # unchanged input: skipped, still halted

    bad[1] = rec("a2", 5, "ann")
    path.write_text(toml_batch(bad))
    fixed = (await rig.ingestor.run_once()).as_dict()
    assert fixed["ok"], fixed
    assert await rig.balance("ann") == -(10 + 5 + 1 + 100)
    views = {v["source"]: v for v in await rig.ingestor.sources_view()}
    assert views["A"]["last_error"] is None
    assert views["A"]["records_consumed_total"] == 4


async def test_deleted_progress_rereads_everything_and_charges_nothing_twice(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    for hour in range(3):
        records = [rec(f"k{hour}-{i}", i + 1, f"acct{i % 3}") for i in range(10)]
        write(tmp_path, "A", f"usage_2026-01-01-0{hour}.toml", records)
    await rig.ingestor.run_once()
    balances = [await rig.balance(f"acct{i}") for i in range(3)]
    assert sum(balances) == -3 * sum(range(1, 11))
    rig.progress.values.clear()
    summary = (await rig.ingestor.run_once()).as_dict()
    assert (summary["charged"], summary["already_charged"]) == (0, 30)
    assert [await rig.balance(f"acct{i}") for i in range(3)] == balances


async def test_two_ingestors_on_one_source_at_once_charge_each_key_once(tmp_path: Path) -> None:
    handler = billing_handler(FOREVER_STORE(), history_limit=1)
    index = InMemoryConsumedIndex()
    progress = InMemoryProgressStore()
    one = Rig(tmp_path, handler, index=index, progress=progress)
    two = Rig(tmp_path, handler, index=index, progress=progress)
    records = [rec(f"k{i}", 1, f"acct{i % 4}") for i in range(40)]
    write(tmp_path, "A", "usage_2026-01-01-00.toml", records)
    results: list[dict[str, Any]] = []

    async def run(rig: Rig) -> None:
        results.append((await rig.ingestor.run_once()).as_dict())

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, one)
        tg.start_soon(run, two)
    assert sum(r["charged"] for r in results) == 40
    assert [await one.balance(f"acct{i}") for i in range(4)] == [-10] * 4
    views = await one.ingestor.sources_view()
    assert views[0]["records_consumed_total"] == 40  # both runs' counts, merged


async def test_a_key_reused_for_another_account_halts_the_source(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    write(tmp_path, "A", "usage_2026-01-01-00.toml", [rec("k", 5, "ann"), rec("k", 5, "bob")])
    summary = (await rig.ingestor.run_once()).as_dict()
    error = summary["sources"][0]["error"]
    assert (error["record_index"], "already consumed" in error["reason"]) == (1, True)
    assert await rig.balance("ann") == -5
    with pytest.raises(Exception, match="not found"):
        await rig.balance("bob")


async def test_a_file_over_the_size_limit_halts_with_the_limit_named(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_file_bytes=64)
    write(tmp_path, "A", "usage_2026-01-01-00.toml", [rec(f"k{i}", 1, "ann") for i in range(9)])
    summary = (await rig.ingestor.run_once()).as_dict()
    assert "AGGREGATE_INGEST_MAX_FILE_BYTES" in summary["sources"][0]["error"]["reason"]


async def test_the_consumed_index_pages_by_source(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    write(tmp_path, "A", "usage_2026-01-01-00.toml", [rec(f"a{i}", 1, "ann") for i in range(5)])
    write(tmp_path, "B", "usage_2026-01-01-00.toml", [rec(f"b{i}", 1, "bob") for i in range(3)])
    await rig.ingestor.run_once()
    seen: list[str] = []
    after = 0
    while True:
        page = await rig.ingestor.consumed(tenant_id=None, source="A", after=after, limit=2)
        seen += [r["idempotency_key"] for r in page["records"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert sorted(seen) == [f"a{i}" for i in range(5)]


def test_records_are_validated_with_the_field_named() -> None:
    cases = {
        b'{"records": [{"idempotency_key": "", "cost_cents": 1, "user_sid": "a"}]}': (
            "idempotency_key"
        ),
        b'{"records": [{"idempotency_key": "k", "cost_cents": 1.5, "user_sid": "a"}]}': (
            "cost_cents"
        ),
        b'{"records": [{"idempotency_key": "k", "cost_cents": true, "user_sid": "a"}]}': (
            "cost_cents"
        ),
        b'{"records": [{"idempotency_key": "k", "cost_cents": 1}]}': "user_sid",
        b'{"records": [{"idempotency_key": "k", "cost_cents": 1, "user_sid": "a", '
        b'"node_name": "a b"}]}': "node_name",
        b'{"records": {}}': "records",
        b"[1": "JSON",
    }
    for data, named in cases.items():
        parsed = parse_batch(data, fmt="json", source_node="A", max_records=10)
        assert parsed.error is not None, data
        assert named in parsed.error.message, (data, parsed)
    too_many = json.dumps({"records": [{}] * 11}).encode()
    error = parse_batch(too_many, fmt="json", source_node="A", max_records=10).error
    assert error is not None
    assert "AGGREGATE_INGEST_MAX_RECORDS_PER_BATCH" in error.message


def test_source_configs_are_checked() -> None:
    assert parse_sources('[{"kind": "directory", "root": "/x", "tenant": "t"}]') == (
        DirectoryRoot(Path("/x"), "t"),
    )
    for bad, named in (
        ('[{"kind": "ftp"}]', "kind"),
        ('[{"kind": "directory"}]', "root"),
        ('[{"kind": "jetstream", "name": "a", "stream": "S", "subject": "u.>"}]', "subject"),
        ('[{"kind": "directory", "root": "/x", "colour": 1}]', "colour"),
        ("{", "JSON"),
    ):
        with pytest.raises(ValueError, match=named):
            parse_sources(bad)


def test_ids_are_deterministic_and_tenant_scoped() -> None:
    assert account_aggregate_id("t", "ann") == account_aggregate_id("t", "ann")
    assert account_aggregate_id("t", "ann") != account_aggregate_id("u", "ann")
    # The documented derivation, so a change of namespace (which would move every account
    # to a new, empty ledger) cannot go unnoticed.
    namespace = uuid.UUID("6c1d0f0e-3b7a-5e34-9a51-0b6f2c8e4d10")
    assert account_aggregate_id("t", "ann") == uuid.uuid5(namespace, "t/ann")


async def test_a_tenant_hosted_elsewhere_is_left_to_its_node(tmp_path: Path) -> None:
    from aggregate.application.gate import TenantGate
    from aggregate.domain.placement import PlacementDecision, PlacementMap

    rig = Rig(tmp_path)
    elsewhere = PlacementMap.of({TENANT: "shard-2"})
    rig.handler.gate = TenantGate(PlacementDecision("local", placement=elsewhere))
    write(tmp_path, "A", "usage_2026-01-01-00.toml", [rec("k", 5, "ann")])
    summary = (await rig.ingestor.run_once()).as_dict()
    assert summary["ok"]
    assert summary["sources"][0]["status"] == "not_hosted"
    assert summary["charged"] == 0
    rig.handler.gate = TenantGate(PlacementDecision("local"))  # the tenant arrives here
    assert (await rig.ingestor.run_once()).as_dict()["charged"] == 1


def test_ingest_metrics_follow_the_tenant_label_setting() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from aggregate.ingest.metrics import IngestMetrics

    for tenant_labels, line in (
        (True, 'aggregate_ingest_records_total{outcome="charged",source="A",tenant_id="t"} 2.0'),
        (False, 'aggregate_ingest_records_total{outcome="charged",source="A"} 2.0'),
    ):
        registry = CollectorRegistry()
        metrics = IngestMetrics(registry, tenant_labels=tenant_labels)
        metrics.records("t", "A", 2, 1)
        metrics.finished("t", "A", lag=3, at=1.0)
        text = generate_latest(registry).decode()
        assert line in text
        assert "aggregate_ingest_lag{" in text


def test_sources_come_from_the_config_file_too(tmp_path: Path) -> None:
    from aggregate.config import load_settings
    from aggregate.domain.errors import ConfigError
    from aggregate.ingest.sources import JetStreamSourceConfig

    config = tmp_path / "aggregate.toml"
    config.write_text(
        "ingest_interval_ms = 60000\n"
        "[[ingest_sources]]\n"
        'kind = "directory"\nroot = "/data/billing"\ntenant = "acme"\n'
        "[[ingest_sources]]\n"
        'kind = "directory"\nroot = "billing"\n'
        "[[ingest_sources]]\n"
        'kind = "jetstream"\nname = "node-c"\nstream = "USAGE"\nsubject = "usage.node-c"\n'
    )
    settings = load_settings({"AGGREGATE_CONFIG_PATH": str(config)})
    assert settings.ingest_sources == (
        DirectoryRoot(Path("/data/billing"), "acme"),
        DirectoryRoot(tmp_path / "billing"),  # relative to the config file
        JetStreamSourceConfig("node-c", "USAGE", "usage.node-c"),
    )
    assert settings.ingest_interval_ms == 60_000
    with pytest.raises(ConfigError, match="AGGREGATE_INGEST_SOURCES: source 1: kind"):
        load_settings({"AGGREGATE_INGEST_SOURCES": '[{"kind": "s3"}]'})


def test_the_cli_verb_refuses_what_it_cannot_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from aggregate.cli import main

    for name in [n for n in os.environ if n.startswith("AGGREGATE_")]:
        monkeypatch.delenv(name)
    assert main(["ingest"]) == 2
    assert "give --once" in capsys.readouterr().err
    assert main(["ingest", "--once", "--example", "billing", "--nats-url", "nats://x:1"]) == 2
    assert "no ingestion sources are configured" in capsys.readouterr().err


async def test_an_unchanged_source_is_skipped_without_reading_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aggregate.ingest import directory

    rig = Rig(tmp_path)
    write(tmp_path, "A", "usage_2026-01-01-00.toml", [rec("k", 5, "ann")])
    await rig.ingestor.run_once()

    def no_reads(path: Path, limit: int) -> bytes:
        raise AssertionError(f"{path.name} was read")

    monkeypatch.setattr(directory, "read_bounded", no_reads)
    summary = (await rig.ingestor.run_once()).as_dict()
    assert summary["sources"][0]["status"] == "skipped"


class _Message:
    """A JetStream message of a usage batch whose acknowledgement may time out."""

    def __init__(self, data: bytes, seq: int, *, ack_fails: bool) -> None:
        self.data = data
        self.metadata = SimpleNamespace(sequence=SimpleNamespace(stream=seq))
        self.ack_fails = ack_fails
        self.handed_back = False

    async def ack_sync(self) -> None:
        if self.ack_fails:
            raise nats.errors.TimeoutError

    async def nak(self) -> None:
        self.handed_back = True


class _OneFetch:
    def __init__(self, messages: list[_Message]) -> None:
        self.messages = messages

    async def fetch(self, batch: int, **_: float) -> list[_Message]:  # nats-py's signature
        if not self.messages:
            raise nats.errors.TimeoutError
        messages, self.messages = self.messages, []
        return messages


async def test_an_acknowledgement_that_fails_stops_the_source_as_unavailable() -> None:
    """The records are charged (a redelivery charges nothing twice); the failure is the
    source's own, as a named error, and the messages after it are handed back."""
    handler = billing_handler(FOREVER_STORE(), history_limit=1)
    run = SourceRun(
        TENANT,
        "node-c",
        "jetstream",
        Charger(handler, InMemoryConsumedIndex(), IngestOptions(default_tenant=TENANT)),
        InMemoryProgressStore(),
    )
    first = _Message(json.dumps({"records": [rec("c1", 5, "cat")]}).encode(), 1, ack_fails=True)
    second = _Message(json.dumps({"records": [rec("c2", 6, "cat")]}).encode(), 2, ack_fails=False)
    source = JetStreamSource(TENANT, "node-c", "USAGE", "usage.node-c")
    with pytest.raises(BackendUnavailableError) as failed:
        await consume_jetstream(source, run, _OneFetch([first, second]))
    assert "node-c" in failed.value.message
    assert (first.handed_back, second.handed_back) == (False, True)
    assert run.progress.stream_seq == 0
