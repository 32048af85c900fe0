"""Snapshots are only an optimisation (DESIGN §5): deleting or corrupting the snapshot
database between restarts changes no answer.

One seeded script of commands (two tenants sharing aggregate ids, rejections, expected
versions, repeated command ids inside and beyond the de-duplication window) runs through the
real handler on the in-memory event store, with restarts (a new handler with an empty cache)
every few commands, in four ways: without snapshots; with the SQLite store and the
snapshotter; deleting ``snapshots.db`` at every restart; corrupting every row at every
restart. Every answer, and every aggregate's final state, version and events, must be the
same in all four.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import trio

from aggregate.adapters.snapshotter import Snapshotter
from aggregate.adapters.sqlite_snapshots import open_sqlite_snapshot_store
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.domain.envelopes import Command
from aggregate.domain.errors import AggregateError, AggregateNotFoundError
from aggregate.domain.ids import AggregateKey, uuid7
from aggregate.programs.base import AggregateTypeSpec
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram, StaticTypes
from specs import bank

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

HISTORY_LIMIT = 4
RESTART_EVERY = 9
MODES = ("no-snapshots", "snapshots", "deleted", "corrupted")


@dataclass(frozen=True)
class Step:
    key: AggregateKey
    command_id: uuid.UUID
    payload: dict[str, Any]
    expected_version: int | None = None


def make_script(seed: int, length: int) -> list[Step]:
    rng = random.Random(seed)
    ids = [uuid7() for _ in range(3)]
    keys = [AggregateKey(tenant, "account", i) for tenant in ("t-one", "t-two") for i in ids]
    steps: list[Step] = []
    sent: dict[AggregateKey, list[Step]] = {k: [] for k in keys}
    versions: dict[AggregateKey, int] = dict.fromkeys(keys, 0)
    for _ in range(length):
        key = rng.choice(keys)
        roll = rng.random()
        if sent[key] and roll < 0.2:
            # A repeat: recent ones are duplicates, old ones are beyond the window.
            original = rng.choice(sent[key])
            steps.append(original)
            continue
        if not sent[key] or roll < 0.25:
            payload: dict[str, Any] = {"type": "OpenAccount", "owner": key.tenant_id}
        elif roll < 0.3:
            payload = {"type": "Deposit", "amount": -5}  # rejected
        else:
            kind = rng.choice(["Deposit", "Deposit", "Withdraw"])
            payload = {"type": kind, "amount": rng.randrange(1, 60)}
        expected = None
        if rng.random() < 0.15:
            expected = versions[key] + rng.choice([0, 0, 1])  # sometimes stale
        step = Step(key, uuid7(), payload, expected)
        steps.append(step)
        sent[key].append(step)
        versions[key] += 1  # only a guess; mismatches are part of the test
    return steps


def answer_of(result: Any) -> tuple[Any, ...]:
    """What a client sees, without the ids and timestamps that differ between runs."""
    events = tuple((e.event_type, e.version, e.payload) for e in result.events)
    return ("ok", result.version, events, result.duplicate)


@dataclass
class Run:
    answers: list[tuple[Any, ...]] = field(default_factory=list)
    rehydrations: list[tuple[AggregateKey, int]] = field(default_factory=list)
    snapshots_written: int = 0

    def conflict(self, key: AggregateKey) -> None:
        pass

    def rehydrated(self, key: AggregateKey, seconds: float, events: int) -> None:
        self.rehydrations.append((key, events))


def types() -> StaticTypes:
    program = FunctionProgram("account", bank.decide, bank.apply)
    return StaticTypes({"account": AggregateTypeSpec("account", program, {})})


@asynccontextmanager
async def open_node(
    mode: str, events: InMemoryEventStore, storage: Path, run: Run
) -> AsyncIterator[CommandHandler]:
    """One service lifetime: snapshot store + snapshotter + a handler with an empty cache."""
    settings = HandlerSettings(snapshot_threshold=2, history_limit=HISTORY_LIMIT)
    if mode == "no-snapshots":
        yield CommandHandler(store=events, types=types(), settings=settings, observer=run)
        return
    async with open_sqlite_snapshot_store(storage) as store, trio.open_nursery() as nursery:
        snapshotter = Snapshotter(store)
        await nursery.start(snapshotter.serve)
        yield CommandHandler(
            store=events,
            types=types(),
            snapshots=store,
            snapshot_sink=snapshotter,
            settings=settings,
            observer=run,
        )
        nursery.cancel_scope.cancel()
    assert snapshotter.last_flush is not None
    assert snapshotter.last_flush.left == 0
    run.snapshots_written += snapshotter.stats.written


def damage(mode: str, storage: Path) -> None:
    """Between two lifetimes: what happens to the snapshot database."""
    if mode == "deleted":
        for path in storage.glob("snapshots.db*"):
            path.unlink()
    elif mode == "corrupted":
        conn = sqlite3.connect(storage / "snapshots.db", isolation_level=None)
        try:
            conn.execute("UPDATE snapshots SET state = '{', history = 'null'")
        finally:
            conn.close()


async def play(mode: str, script: list[Step], storage: Path) -> tuple[Run, list[Any]]:
    run = Run()
    events = InMemoryEventStore()
    for start in range(0, len(script), RESTART_EVERY):
        async with open_node(mode, events, storage, run) as handler:
            for step in script[start : start + RESTART_EVERY]:
                command = Command(
                    step.key, step.command_id, step.payload, expected_version=step.expected_version
                )
                try:
                    run.answers.append(answer_of(await handler.handle(command)))
                except AggregateError as exc:
                    run.answers.append(("error", type(exc).__name__, exc.message))
        damage(mode, storage)
    final: list[Any] = []
    async with open_node(mode, events, storage, run) as handler:
        for key in sorted({s.key for s in script}):
            try:
                view = await handler.get(key)
            except AggregateNotFoundError:
                final.append((key, "not found"))
                continue
            stored = await handler.events(key)
            history = [(e.event_type, e.version, e.payload) for e in stored]
            final.append((key, view.version, view.state, history))
    return run, final


@pytest.mark.trio
@pytest.mark.parametrize("seed", [7, 2024])
async def test_snapshot_database_changes_no_answer(tmp_path: Path, seed: int) -> None:
    script = make_script(seed, 120)
    results = {}
    with trio.fail_after(60):
        for mode in MODES:
            results[mode] = await play(mode, script, tmp_path / mode)
    baseline_run, baseline_final = results["no-snapshots"]
    kinds = {a[0] if a[0] == "ok" else a[1] for a in baseline_run.answers}
    # The script exercises what snapshots must carry: duplicates, rejections, the window.
    assert {"ok", "CommandRejectedError", "CommandIdTooOldError"} <= kinds
    assert any(a[0] == "ok" and a[3] for a in baseline_run.answers)
    for mode in MODES[1:]:
        run, final = results[mode]
        assert run.answers == baseline_run.answers, mode
        assert final == baseline_final, mode
        assert run.snapshots_written > 0, mode

    # Snapshots were really used: the same rehydrations replayed fewer events.
    def replayed(mode: str) -> int:
        return sum(events for _, events in results[mode][0].rehydrations)

    assert replayed("snapshots") < replayed("no-snapshots")
    assert replayed("deleted") == replayed("corrupted") == replayed("no-snapshots")
