"""The real ingestor beside the model of exactly-once ingestion (``specs/ingest.py``).

Real parts: the ingestor, the command handler, the billing ledger program (inline
Starlark), directory sources on disk. In memory: the event store, progress and index. Rules
add and grow batch files, run the ingestor to completion, kill a run after a few charges
(its unsaved progress is lost, as with SIGKILL), delete every source's progress, and run two
ingestors on the same sources at once; after every step the ledgers must satisfy the
model's invariants.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from aggregate.domain.errors import AggregateNotFoundError
from aggregate.domain.ids import AggregateKey
from aggregate.ingest.charge import Charger, IngestOptions
from aggregate.ingest.records import UsageRecord, account_aggregate_id
from aggregate.ingest.runner import Ingestor
from aggregate.ingest.sources import DirectoryRoot
from aggregate.testing.memory_ingest import (
    InMemoryConsumedIndex,
    InMemoryProgressStore,
    billing_handler,
)
from aggregate.testing.memory_store import InMemoryEventStore
from specs.ingest import IngestModel, Record

TENANT = "acme"
ACCOUNTS = ("ann", "bob", "cat")
SOURCES = ("A", "B")
KEYS = 16


def record_of(i: int) -> Record:
    return (f"k{i}", ACCOUNTS[i % len(ACCOUNTS)], i + 1)


class Killed(Exception):
    """The simulated SIGKILL: nothing after it runs, no progress saved after it."""


class KillableProgress(InMemoryProgressStore):
    killed = False

    async def save(self, tenant_id: str, source: str, progress: Any, revision: int) -> int:
        if self.killed:
            raise Killed
        return await super().save(tenant_id, source, progress, revision)


class KillingCharger(Charger):
    def __init__(self, base: Charger, after: int, progress: KillableProgress) -> None:
        super().__init__(base.handler, base.index, base.options)
        self.left = after
        self.progress = progress

    async def charge(self, tenant_id: str, source: str, record: UsageRecord) -> bool:
        if self.left <= 0:
            self.progress.killed = True
            raise Killed
        self.left -= 1
        return await super().charge(tenant_id, source, record)


class KillAfterClaim(InMemoryConsumedIndex):
    """Kills the run right after its n-th claim is written, before the record's charge."""

    def __init__(self, base: InMemoryConsumedIndex, after: int, progress: KillableProgress):
        super().__init__()
        self.entries, self.base, self.left, self.progress = base.entries, base, after, progress

    async def claim(self, tenant_id: str, entry: Any) -> Any:
        claim = await self.base.claim(tenant_id, entry)
        if self.left <= 0:
            self.progress.killed = True
            raise Killed
        self.left -= 1
        return claim


class IngestMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.stack = contextlib.ExitStack()
        self.portal = self.stack.enter_context(anyio.from_thread.start_blocking_portal("trio"))
        self.root = Path(tempfile.mkdtemp(prefix="ingest-machine-"))
        self.stack.callback(shutil.rmtree, self.root, True)
        # A one-command history and no duplicate window: every repeat must be caught by the
        # ledger's own record of the keys it charged, the guarantee that holds forever.
        self.handler = billing_handler(InMemoryEventStore(duplicate_window_s=0), history_limit=1)
        self.index = InMemoryConsumedIndex()
        self.progress = KillableProgress()
        self.model = IngestModel()
        self.seen: dict[str, Record] = {}
        self.hours = dict.fromkeys(SOURCES, 0)

    def teardown(self) -> None:
        self.stack.close()

    def ingestor(self, concurrency: int = 3) -> Ingestor:
        return Ingestor(
            handler=self.handler,
            sources=[DirectoryRoot(self.root, TENANT)],
            progress=self.progress,
            index=self.index,
            options=IngestOptions(default_tenant=TENANT, concurrency=concurrency),
        )

    def _write(self, source: str, file: str) -> None:
        path = self.root / "nodes" / source / file
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for key, account, cost in self.model.sources[source][file]:
            lines += ["[[records]]", f"idempotency_key = {json.dumps(key)}"]
            lines += [f"cost_cents = {cost}", f"user_sid = {json.dumps(account)}"]
            lines.append(f"node_name = {json.dumps('n')}")  # one node name: repeats match
        path.write_text("\n".join(lines) + "\n")

    @initialize()
    def start(self) -> None:
        (self.root / "nodes").mkdir(parents=True, exist_ok=True)

    @rule(
        source=st.sampled_from(SOURCES),
        keys=st.lists(st.integers(0, KEYS - 1), min_size=1, max_size=6),
    )
    def add_file(self, source: str, keys: list[int]) -> None:
        file = f"usage_2026-01-01-{self.hours[source]:02d}.toml"
        self.hours[source] += 1
        records = [record_of(i) for i in keys]
        self.model.add_records(source, file, records)
        self.seen.update((r[0], r) for r in records)
        self._write(source, file)
        note(f"{source}/{file}: {[r[0] for r in records]}")

    @rule(
        source=st.sampled_from(SOURCES),
        keys=st.lists(st.integers(0, KEYS - 1), min_size=1, max_size=3),
    )
    def grow_last_file(self, source: str, keys: list[int]) -> None:
        if not self.hours[source]:
            return
        file = f"usage_2026-01-01-{self.hours[source] - 1:02d}.toml"
        records = [record_of(i) for i in keys]
        self.model.add_records(source, file, records)
        self.seen.update((r[0], r) for r in records)
        self._write(source, file)
        note(f"{source}/{file} grew: {[r[0] for r in records]}")

    @rule()
    def run(self) -> None:
        summary = self.portal.call(self.ingestor().run_once).as_dict()
        note(f"run: charged {summary['charged']}, already {summary['already_charged']}")
        assert summary["ok"], summary
        self.model.complete_run()

    @rule(after=st.integers(0, 6), concurrency=st.integers(1, 4))
    def run_killed(self, after: int, concurrency: int) -> None:
        ingestor = self.ingestor(concurrency)
        ingestor.charger = KillingCharger(ingestor.charger, after, self.progress)
        try:
            self.portal.call(ingestor.run_once)
        except Exception as exc:  # Killed, alone or in exception groups
            if not _holds_killed(exc):
                raise
            note(f"run killed after {after} charges")
        else:
            note(f"run finished before its kill after {after} charges")
            self.model.complete_run()
        finally:
            self.progress.killed = False

    @rule(after=st.integers(0, 6))
    def run_killed_between_claim_and_charge(self, after: int) -> None:
        ingestor = self.ingestor(1)
        ingestor.charger.index = KillAfterClaim(self.index, after, self.progress)
        try:
            self.portal.call(ingestor.run_once)
        except Exception as exc:
            if not _holds_killed(exc):
                raise
            note(f"run killed after claim {after + 1}, before its charge")
        else:
            self.model.complete_run()
        finally:
            self.progress.killed = False

    @rule()
    def delete_progress(self) -> None:
        self.progress.values.clear()
        note("progress deleted")

    @rule()
    def two_runs_at_once(self) -> None:
        first, second = self.ingestor(2), self.ingestor(3)

        async def both() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.run_once)
                tg.start_soon(second.run_once)

        self.portal.call(both)
        note("two runs at once")
        self.model.complete_run()

    def charged(self) -> tuple[dict[str, list[Record]], dict[str, int]]:
        charged: dict[str, list[Record]] = {}
        balances: dict[str, int] = {}
        for account in ACCOUNTS:
            key = AggregateKey(TENANT, "billing-account", account_aggregate_id(TENANT, account))
            try:
                view = self.portal.call(self.handler.get, key)
            except AggregateNotFoundError:
                continue
            balances[account] = view.state["balance_cents"]
            for event in self.portal.call(self.handler.events, key):
                if event.event_type == "UsageCharged":
                    p = event.payload
                    record = (p["idempotency_key"], account, p["cost_cents"])
                    charged.setdefault(record[0], []).append(record)
        return charged, balances

    @invariant()
    def exactly_once(self) -> None:
        charged, balances = self.charged()
        self.model.check(charged, may=self.seen)
        expected = IngestModel.balances(charged)
        assert {a: b for a, b in balances.items() if b or a in expected} == expected


def _holds_killed(exc: BaseException) -> bool:
    if isinstance(exc, Killed):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_holds_killed(e) for e in exc.exceptions)
    return False


TestIngestMachine = IngestMachine.TestCase
TestIngestMachine.settings = settings(settings.default, max_examples=30, deadline=None)


def test_the_machine_catches_a_double_charge() -> None:
    """The invariants are not vacuous: a key charged twice, or lost, is caught."""
    model = IngestModel()
    model.add_records("A", "f", [record_of(1)])
    with pytest.raises(AssertionError, match="more than once"):
        model.check({"k1": [record_of(1), record_of(1)]}, may={"k1": record_of(1)})
    model.complete_run()
    with pytest.raises(AssertionError, match="not charged"):
        model.check({}, may={"k1": record_of(1)})


def test_runs_with_a_larger_budget() -> None:
    run_state_machine_as_test(
        IngestMachine, settings=settings(settings.default, max_examples=10, stateful_step_count=40)
    )
