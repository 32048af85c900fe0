"""Per-call cost of the decide/apply programs (DESIGN §7), on the bank example.

One call = ``decide(state, command)`` plus ``apply`` of its event, as the command handler
does it, alternating Deposit and Withdraw on an opened account. Measured for:

- ``inline``: Starlark in the benchmark's own process;
- ``process``: Starlark in a one-worker ``WorkerPool`` (one pipe round trip a call);
- ``python``: the same rules as trusted Python callables.

Also one rehydration: ``apply`` of 10,000 events in one call. Prints median and p90 per
mode and the process/inline ratio.

Run: ``.venv/bin/python bench/programs_bench.py [--calls 5000] [--backend trio]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anyio

from aggregate.config.manifest import example_manifest_path, load_manifest
from aggregate.domain.manifest import Isolation, Language, Manifest, ProgramSource
from aggregate.programs.base import (
    Accepted,
    AggregateProgram,
    Decision,
    ProgramLimits,
)
from aggregate.programs.pool import WorkerPool
from aggregate.programs.registry import build_specs


def variant(manifest: Manifest, **changes: Any) -> Manifest:
    spec = dataclasses.replace(manifest.types["bank-account"], **changes)
    return Manifest(types={"bank-account": spec})


def accepted(decision: Decision) -> dict[str, Any]:
    assert isinstance(decision, Accepted), decision
    return decision.state


async def time_calls(program: AggregateProgram, calls: int) -> list[float]:
    state = accepted(await program.decide({}, {"type": "OpenAccount", "owner": "bench"}))
    commands = [{"type": "Deposit", "amount": 7}, {"type": "Withdraw", "amount": 5}]
    for i in range(50):  # warm up (compile caches, worker caches)
        state = accepted(await program.decide(state, commands[i % 2]))
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        decision = await program.decide(state, commands[i % 2])
        samples.append(time.perf_counter() - start)
        state = accepted(decision)
    return samples


async def time_rehydration(program: AggregateProgram, events: int, repeats: int = 5) -> float:
    batch: list[dict[str, Any]] = [{"type": "AccountOpened", "owner": "bench"}]
    batch += [{"type": "MoneyDeposited", "amount": 1}] * (events - 1)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        state = await program.apply({}, batch)
        samples.append(time.perf_counter() - start)
    assert state["balance"] == events - 1
    return statistics.median(samples)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(calls: int, events: int, backend: str) -> None:
    bank = load_manifest(example_manifest_path("bank"))
    reference = "aggregate.examples.bank.python_program:{}"
    python = variant(
        bank,
        language=Language.PYTHON,
        isolation=Isolation.INLINE,
        decide=ProgramSource(reference.format("decide"), "bench"),
        apply=ProgramSource(reference.format("apply"), "bench"),
    )
    results: dict[str, tuple[list[float], float]] = {}
    async with WorkerPool(ProgramLimits(pool_size=1)) as pool:
        for name, manifest in [
            ("inline", variant(bank, isolation=Isolation.INLINE)),
            ("process", bank),
            ("python", python),
        ]:
            program = build_specs(manifest, pool=pool)["bank-account"].program
            per_call = await time_calls(program, calls)
            results[name] = (per_call, await time_rehydration(program, events))
    print(f"decide + apply per call, bank example, {calls} calls ({backend})")
    print(f"{'mode':<8} {'median µs':>10} {'p90 µs':>10} {f'apply {events} ev ms':>18}")
    for name, (samples, rehydration) in results.items():
        median, p90 = statistics.median(samples), percentile(samples, 0.9)
        print(f"{name:<8} {median * 1e6:>10.1f} {p90 * 1e6:>10.1f} {rehydration * 1e3:>18.1f}")
    inline, process = results["inline"], results["process"]
    ratio = statistics.median(process[0]) / statistics.median(inline[0])
    print(
        f"process/inline ratio: {ratio:.1f}x per call, "
        f"{process[1] / inline[1]:.1f}x per rehydration"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    anyio.run(main, args.calls, args.events, args.backend, backend=args.backend)
