"""The executable model of exactly-once usage ingestion: obviously correct, no tricks.

A world of sources, each a set of batch files (name -> records in order), and a ledger per
account. A record is ``(idempotency_key, account, cost_cents)``; one key always names the
same record. What ingestion must guarantee, whatever happens between runs (runs killed
after any number of charges, progress deleted, two runs at once, files added or grown):

- **at most once**: no key is ever charged twice;
- **nothing invented**: only keys some source held are charged, each with its own record;
- **nothing lost**: after a run that completes, every key any source holds is charged;
- **balances**: an account's balance is minus the sum of the costs of its charged keys.

The model keeps the keys that must be charged (``complete_run``) and the keys that may have
been (``seen``); the property test (tests/property/test_ingest_machine.py) drives the real
ingestor beside it and checks the real ledgers against it after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Record = tuple[str, str, int]
"""(idempotency_key, account, cost_cents)."""


@dataclass
class IngestModel:
    """Sources and what must (and may) be charged."""

    sources: dict[str, dict[str, list[Record]]] = field(default_factory=dict)
    must: dict[str, Record] = field(default_factory=dict)
    """Keys every later state must show charged (a run that completed saw them)."""

    def add_records(self, source: str, file: str, records: list[Record]) -> None:
        self.sources.setdefault(source, {}).setdefault(file, []).extend(records)

    def held(self) -> dict[str, Record]:
        """Every key some source holds now, with its record."""
        return {r[0]: r for files in self.sources.values() for rs in files.values() for r in rs}

    def complete_run(self) -> None:
        """A run that finished over every source: everything held is charged."""
        self.must.update(self.held())

    def check(self, charged: dict[str, list[Record]], *, may: dict[str, Record]) -> None:
        """``charged``: key -> every charge of it the ledgers hold. ``may``: every key a
        source ever held (a killed run may have charged any of them).

        Raises:
            AssertionError: an invariant does not hold (the message says which).
        """
        twice = sorted(k for k, charges in charged.items() if len(charges) > 1)
        assert not twice, f"charged more than once: {twice}"
        invented = sorted(k for k in charged if k not in may or charged[k][0] != may[k])
        assert not invented, f"charged without a record (or with another one): {invented}"
        lost = sorted(k for k in self.must if k not in charged)
        assert not lost, f"consumed by a completed run but not charged: {lost}"

    @staticmethod
    def balances(charged: dict[str, list[Record]]) -> dict[str, int]:
        """The balance every account must show for ``charged``."""
        out: dict[str, int] = {}
        for charges in charged.values():
            _, account, cost = charges[0]
            out[account] = out.get(account, 0) - cost
        return out
