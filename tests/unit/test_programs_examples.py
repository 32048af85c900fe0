"""The bundled examples (bank, billing) behave as documented, and the bank example gives
identical answers inline, in worker processes and as Python callables."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from aggregate.config.manifest import example_manifest_path, load_manifest
from aggregate.domain.manifest import Isolation, Language, Manifest, ProgramSource
from aggregate.programs.base import (
    Accepted,
    AggregateProgram,
    AggregateTypeSpec,
    ProgramLimits,
    Rejected,
)
from aggregate.programs.pool import WorkerPool
from aggregate.programs.registry import build_specs

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def inline(manifest: Manifest) -> Manifest:
    types = {
        name: dataclasses.replace(spec, isolation=Isolation.INLINE)
        for name, spec in manifest.types.items()
    }
    return dataclasses.replace(manifest, types=types)


def example(name: str) -> Manifest:
    return load_manifest(example_manifest_path(name))


def bank_inline() -> AggregateTypeSpec:
    return build_specs(inline(example("bank")))["bank-account"]


def bank_python() -> AggregateTypeSpec:
    spec = example("bank").types["bank-account"]
    reference = "aggregate.examples.bank.python_program:{}"
    python = dataclasses.replace(
        spec,
        language=Language.PYTHON,
        isolation=Isolation.INLINE,
        decide=ProgramSource(reference.format("decide"), "test"),
        apply=ProgramSource(reference.format("apply"), "test"),
    )
    manifest = Manifest(types={"bank-account": python})
    return build_specs(manifest)["bank-account"]


@pytest.fixture
async def bank_process() -> AsyncIterator[AggregateTypeSpec]:
    async with WorkerPool(ProgramLimits(pool_size=1)) as pool:
        yield build_specs(example("bank"), pool=pool)["bank-account"]


async def run(
    program: AggregateProgram, state: dict[str, Any], commands: list[dict[str, Any]]
) -> tuple[list[object], dict[str, Any], list[dict[str, Any]]]:
    """Decide each command in turn; the decisions, the final state and all events."""
    decisions: list[object] = []
    events: list[dict[str, Any]] = []
    for command in commands:
        with anyio.fail_after(10):
            decision = await program.decide(state, command)
        decisions.append(decision)
        if isinstance(decision, Accepted):
            state = decision.state
            events.extend(decision.events)
    return decisions, state, events


BANK_SCRIPT: list[tuple[dict[str, Any], object]] = [
    ({"type": "Deposit", "amount": 5}, "account not opened"),
    ({"type": "OpenAccount", "owner": ""}, "owner must be a non-empty string"),
    ({"type": "OpenAccount", "owner": "ada"}, [{"type": "AccountOpened", "owner": "ada"}]),
    ({"type": "OpenAccount", "owner": "bob"}, "account already opened"),
    ({"type": "Deposit", "amount": 100}, [{"type": "MoneyDeposited", "amount": 100}]),
    ({"type": "Deposit", "amount": 0}, "amount must be a positive integer"),
    ({"type": "Deposit", "amount": -3}, "amount must be a positive integer"),
    ({"type": "Deposit", "amount": 2.5}, "amount must be a positive integer"),
    ({"type": "Deposit", "amount": "7"}, "amount must be a positive integer"),
    ({"type": "Deposit", "amount": True}, "amount must be a positive integer"),
    ({"type": "Deposit"}, "amount must be a positive integer"),
    ({"type": "Withdraw", "amount": 30}, [{"type": "MoneyWithdrawn", "amount": 30}]),
    ({"type": "Withdraw", "amount": 71}, "insufficient funds: balance 70, requested 71"),
    ({"type": "Withdraw", "amount": 70}, [{"type": "MoneyWithdrawn", "amount": 70}]),
    ({"type": "Deposit", "amount": 2**70}, [{"type": "MoneyDeposited", "amount": 2**70}]),
    ({"type": "Close"}, "unknown command type Close"),
]


def expected_decision(outcome: object) -> type:
    return Rejected if isinstance(outcome, str) else Accepted


@pytest.mark.parametrize("flavour", ["inline", "python"])
async def test_bank_example_follows_its_rules(flavour: str) -> None:
    spec = bank_inline() if flavour == "inline" else bank_python()
    commands = [command for command, _ in BANK_SCRIPT]
    decisions, state, _ = await run(spec.program, dict(spec.initial_state), commands)
    for decision, (command, outcome) in zip(decisions, BANK_SCRIPT, strict=True):
        assert isinstance(decision, expected_decision(outcome)), command
        if isinstance(decision, Rejected):
            assert decision.reason == outcome
        else:
            assert isinstance(decision, Accepted)
            assert decision.events == outcome
    assert state == {"owner": "ada", "balance": 2**70}


async def test_bank_answers_are_identical_inline_in_process_and_in_python(
    bank_process: AggregateTypeSpec,
) -> None:
    commands = [command for command, _ in BANK_SCRIPT]
    results = {}
    for name, spec in [
        ("inline", bank_inline()),
        ("process", bank_process),
        ("python", bank_python()),
    ]:
        decisions, state, events = await run(spec.program, {}, commands)
        rebuilt = await spec.program.apply({}, events)
        results[name] = (decisions, state, events, rebuilt)
    assert results["inline"] == results["process"] == results["python"]
    assert results["inline"][1] == results["inline"][3]  # replaying events gives the state


async def billing() -> tuple[AggregateProgram, dict[str, Any]]:
    spec = build_specs(inline(example("billing")))["billing-account"]
    return spec.program, dict(spec.initial_state)


def usage(key: str, cost: object, node: str = "node-a", **extra: Any) -> dict[str, Any]:
    return {
        "type": "RecordUsage",
        "idempotency_key": key,
        "cost_cents": cost,
        "node_name": node,
        **extra,
    }


async def test_billing_charges_each_idempotency_key_exactly_once() -> None:
    program, state = await billing()
    commands = [
        {"type": "TopUpCredit", "amount_cents": 1000, "idempotency_key": "pay-1"},
        usage("u-1", 300, user_sid="S-1"),
        usage("u-1", 300, user_sid="S-1"),  # a node re-pushing the same record
        usage("u-2", 200, node="node-b"),
        {"type": "TopUpCredit", "amount_cents": 1000, "idempotency_key": "pay-1"},
    ]
    _, state, events = await run(program, state, commands)
    assert [e["type"] for e in events] == [
        "CreditToppedUp",
        "UsageCharged",
        "UsageAlreadyCharged",
        "UsageCharged",
        "TopUpAlreadyCredited",
    ]
    assert events[1] == {
        "type": "UsageCharged",
        "idempotency_key": "u-1",
        "cost_cents": 300,
        "node_name": "node-a",
        "user_sid": "S-1",
        "balance_cents": 700,
    }
    assert "user_sid" not in events[3]
    assert state["balance_cents"] == 500
    assert state["overdrawn"] is False
    assert state["nodes"] == {
        "node-a": {"records_consumed": 1, "cost_cents": 300, "duplicates_ignored": 1},
        "node-b": {"records_consumed": 1, "cost_cents": 200, "duplicates_ignored": 0},
    }


async def test_billing_refuses_a_reused_key_for_a_different_record() -> None:
    program, state = await billing()
    decisions, state, _ = await run(program, state, [usage("u-1", 300), usage("u-1", 301)])
    assert decisions[1] == Rejected(
        "idempotency_key u-1 was already charged for a different record (300 cents on node-a)"
    )
    top_ups = [{"type": "TopUpCredit", "amount_cents": n, "idempotency_key": "p"} for n in (5, 6)]
    decisions, state, _ = await run(program, state, top_ups)
    assert decisions[1] == Rejected("idempotency_key p was already used for a top-up of 5 cents")


async def test_billing_usage_beyond_the_balance_is_charged_and_flagged() -> None:
    program, state = await billing()
    commands = [
        {"type": "TopUpCredit", "amount_cents": 100, "idempotency_key": "pay-1"},
        usage("u-1", 250),
        {"type": "TopUpCredit", "amount_cents": 200, "idempotency_key": "pay-2"},
    ]
    decisions, state, _ = await run(program, state, commands)
    charged = decisions[1]
    assert isinstance(charged, Accepted)
    assert charged.events == [
        {
            "type": "UsageCharged",
            "idempotency_key": "u-1",
            "cost_cents": 250,
            "node_name": "node-a",
            "balance_cents": -150,
        },
        {
            "type": "CreditOverdrawn",
            "idempotency_key": "u-1",
            "balance_cents": -150,
            "overdrawn_cents": 150,
        },
    ]
    assert charged.state["balance_cents"] == -150
    assert charged.state["overdrawn"] is True
    assert state["balance_cents"] == 50
    assert state["overdrawn"] is False


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (
            {"type": "TopUpCredit", "amount_cents": 0, "idempotency_key": "k"},
            "amount_cents must be a positive integer",
        ),
        ({"type": "TopUpCredit", "amount_cents": 10}, "idempotency_key must be a non-empty string"),
        (usage("k", -1), "cost_cents must be a non-negative integer"),
        (usage("k", 1.5), "cost_cents must be a non-negative integer"),
        (usage("k", 1, node=""), "node_name must be a non-empty string"),
        (usage("", 1), "idempotency_key must be a non-empty string"),
        (usage("k", 1, user_sid=7), "user_sid must be a string when given"),
        ({"type": "Refund"}, "unknown command type Refund"),
    ],
)
async def test_billing_rejects_malformed_commands(command: dict[str, Any], reason: str) -> None:
    program, state = await billing()
    assert await program.decide(state, command) == Rejected(reason)


async def test_billing_runs_in_worker_processes_as_its_manifest_says() -> None:
    manifest = example("billing")
    assert manifest.types["billing-account"].isolation is Isolation.PROCESS
    commands = [
        {"type": "TopUpCredit", "amount_cents": 100, "idempotency_key": "pay-1"},
        usage("u-1", 30),
        usage("u-1", 30),
        usage("u-2", 80),
    ]
    async with WorkerPool(ProgramLimits(pool_size=1)) as pool:
        spec = build_specs(manifest, pool=pool)["billing-account"]
        in_process = await run(spec.program, dict(spec.initial_state), commands)
        rebuilt = await spec.program.apply(spec.initial_state, in_process[2])
    program, state = await billing()
    assert in_process == await run(program, state, commands)
    assert rebuilt == in_process[1]
    assert rebuilt["balance_cents"] == -10
