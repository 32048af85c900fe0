"""Charging one usage record, and one source's run state (progress, report, saving).

A record is charged in two steps, in this order:

1. **claim** the idempotency key in the consumed-record index (a create-only entry). The
   claim is what stops one key from being charged to two accounts: a key already claimed
   for another account, cost or node halts the source with that reason.
2. **submit** ``RecordUsage`` to the account's ledger aggregate through the command handler
   (the same path as gRPC). The ledger's ``decide`` answers ``UsageAlreadyCharged`` for a key
   its state already holds, and the conditional append serializes every writer of one
   account, so the check and the charge are one step: two runs at once, a re-read from
   scratch, or a retry after a kill can never charge a key twice.

A crash between the two steps leaves a claim without a charge; progress has not moved past
the record, so the next run of the source claims it again (finds its own entry) and charges.
"""

from __future__ import annotations

import datetime
import logging
import random
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio

from aggregate.application.ingest_ports import ProgressConflictError
from aggregate.domain.envelopes import Command
from aggregate.domain.errors import (
    BackendUnavailableError,
    CommandRejectedError,
    VersionConflictError,
    quote,
)
from aggregate.domain.ids import AggregateKey
from aggregate.ingest.progress import ConsumedEntry, SourceError, SourceProgress, merge_progress
from aggregate.ingest.records import (
    BadRecordError,
    UsageRecord,
    account_aggregate_id,
    record_command_id,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from aggregate.application.handler import CommandHandler
    from aggregate.application.ingest_ports import ConsumedIndex, ProgressStore
    from aggregate.domain.envelopes import CommandResult
    from aggregate.ingest.metrics import IngestMetrics

log = logging.getLogger(__name__)
SAVE_ATTEMPTS = 8
CONFLICT_RETRIES = 6
"""Extra tries of a record whose ledger kept changing under the handler's own retries."""
CONFLICT_BACKOFF_S = 0.01


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """The ingestor's tuning; the service builds it from ``Settings``."""

    aggregate_type: str = "billing-account"
    default_tenant: str = "_default"
    max_file_bytes: int = 8 * 1024 * 1024
    max_records_per_batch: int = 100_000
    max_files_per_source: int = 2000
    concurrency: int = 64
    progress_log_s: float = 10.0
    fetch_timeout_s: float = 2.0
    ack_wait_s: float = 60.0


def _distinct_keys(records: list[UsageRecord]) -> list[UsageRecord]:
    """The leading records with no repeated idempotency key: a repeat waits for the next
    batch, so the first occurrence of a key is always the one charged first."""
    seen: set[str] = set()
    for i, record in enumerate(records):
        if record.idempotency_key in seen:
            return records[:i]
        seen.add(record.idempotency_key)
    return records


class Charger:
    """Claims and charges records for every source of one ingestor."""

    def __init__(
        self, handler: CommandHandler, index: ConsumedIndex, options: IngestOptions
    ) -> None:
        self.handler = handler
        self.index = index
        self.options = options

    async def charge(self, tenant_id: str, source: str, record: UsageRecord) -> bool:
        """Charge ``record`` once; True when this call charged it, False when it already was.

        Raises:
            BadRecordError: the key was consumed for another record, or the ledger refused
                the record (the message says why).
            AggregateError: the handler or the index failed (the source stops for this run).
        """
        aggregate_id = account_aggregate_id(tenant_id, record.account)
        entry = ConsumedEntry(
            record.idempotency_key,
            record.account,
            record.cost_cents,
            record.node_name,
            source,
            utc_now(),
            str(aggregate_id),
        )
        claim = await self.index.claim(tenant_id, entry)
        if not claim.entry.same_record(entry):
            first = claim.entry
            raise BadRecordError(
                f"idempotency_key {quote(record.idempotency_key)} was already consumed for "
                f"another record ({first.cost_cents} cents to account {quote(first.account)} "
                f"from node {quote(first.node_name)})"
            )
        command = Command(
            key=AggregateKey(tenant_id, self.options.aggregate_type, aggregate_id),
            command_id=record_command_id(tenant_id, record),
            payload=record.command_payload(),
            metadata={"ingest-source": source},
        )
        try:
            result = await self._handle(command)
        except CommandRejectedError as exc:
            if claim.created:
                await self.index.release(tenant_id, record.idempotency_key, claim.revision)
            raise BadRecordError(f"the ledger refused the record: {exc.message}") from None
        return not result.duplicate and any(e.event_type == "UsageCharged" for e in result.events)

    async def _handle(self, command: Command) -> CommandResult:
        """Submit, retrying a persistent version conflict (another ingestor charging the
        same account at the same time) a few times with jittered backoff: the command is
        safe to repeat, since its id is fixed and the ledger knows the keys it charged.

        Raises:
            VersionConflictError: still conflicting after ``CONFLICT_RETRIES`` more tries.
        """
        for attempt in range(CONFLICT_RETRIES):
            try:
                return await self.handler.handle(command)
            except VersionConflictError:
                await anyio.sleep(CONFLICT_BACKOFF_S * (2**attempt) * (0.5 + random.random()))
        return await self.handler.handle(command)


@dataclass
class SourceReport:
    """What one run did to one source (a line of the run summary)."""

    tenant_id: str
    source: str
    kind: str
    status: str = "consumed"  # consumed | skipped | halted | failed | not_hosted
    records_read: int = 0
    charged: int = 0
    already_charged: int = 0
    cost_cents_charged: int = 0
    error: SourceError | None = None
    lag: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "source": self.source,
            "kind": self.kind,
            "status": self.status,
            "records_read": self.records_read,
            "charged": self.charged,
            "already_charged": self.already_charged,
            "cost_cents_charged": self.cost_cents_charged,
            "error": self.error.as_dict() if self.error else None,
        }


@dataclass
class SourceRun:
    """One run of one source: its progress (saved compare-and-set), its report."""

    tenant_id: str
    source: str
    kind: str
    charger: Charger
    store: ProgressStore
    metrics: IngestMetrics | None = None
    progress: SourceProgress = field(default_factory=SourceProgress)
    base: SourceProgress = field(default_factory=SourceProgress)
    revision: int = 0
    report: SourceReport = field(init=False)
    _last_log: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.report = SourceReport(self.tenant_id, self.source, self.kind)

    async def load(self) -> None:
        self.progress, self.revision = await self.store.load(self.tenant_id, self.source)
        self.base = self.progress

    async def save(self) -> None:
        """Store the progress; another run's progress stored meanwhile is merged in.

        Raises:
            BackendUnavailableError: the store failed, or kept changing under us.
        """
        for _ in range(SAVE_ATTEMPTS):
            try:
                self.revision = await self.store.save(
                    self.tenant_id, self.source, self.progress, self.revision
                )
                self.base = self.progress
                return
            except ProgressConflictError:
                stored, revision = await self.store.load(self.tenant_id, self.source)
                self.progress = merge_progress(stored, self.base, self.progress)
                self.base, self.revision = stored, revision
        raise BackendUnavailableError(
            f"progress of source {self.source} kept changing; {SAVE_ATTEMPTS} attempts failed"
        )

    def halt(self, error: SourceError) -> None:
        self.report.status = "halted"
        self.report.error = error
        self.progress = replace(self.progress, last_error=error)
        log.warning(
            "ingest source %s/%s halted: %s (file %s, record %s, stream sequence %s)",
            self.tenant_id,
            self.source,
            error.reason,
            error.file,
            error.record_index,
            error.stream_seq,
        )
        if self.metrics is not None:
            self.metrics.error(self.tenant_id, self.source)

    async def charge_all(
        self,
        records: list[UsageRecord],
        start: int,
        *,
        checkpoint: Callable[[int], None] | None = None,
        where: str = "",
    ) -> tuple[int, BadRecordError | None]:
        """Charge ``records[start:]``, ``concurrency`` at a time. Returns how many leading
        records are done and the first bad one (its ``index`` set), or None.

        Raises:
            AggregateError: a charge failed for another reason; ``checkpoint`` has been
                told how many leading records were done before the failing batch.
        """
        width = self.charger.options.concurrency
        done = start
        while done < len(records):
            chunk = _distinct_keys(records[done : done + width])
            outcomes: list[bool | Exception] = [False] * len(chunk)

            async with anyio.create_task_group() as tg:
                for i, record in enumerate(chunk):
                    tg.start_soon(self._charge_into, outcomes, i, record)
            # Every record that went through counts, even after a failed one in the batch
            # (it was charged); progress only moves past the failed one's predecessors.
            self._count(chunk, outcomes)
            for i, outcome in enumerate(outcomes):
                if isinstance(outcome, Exception):
                    if isinstance(outcome, BadRecordError):
                        outcome.index = done + i
                        return done + i, outcome
                    if checkpoint is not None:
                        checkpoint(done + i)
                    raise outcome
            done += len(chunk)
            if checkpoint is not None:
                checkpoint(done)
            self._maybe_log(where)
        return done, None

    async def _charge_into(
        self, outcomes: list[bool | Exception], i: int, record: UsageRecord
    ) -> None:
        try:
            outcomes[i] = await self.charger.charge(self.tenant_id, self.source, record)
        except Exception as exc:  # kept, so the batch's other records finish
            outcomes[i] = exc

    def _count(self, chunk: list[UsageRecord], outcomes: list[bool | Exception]) -> None:
        report = self.report
        for record, fresh in zip(chunk, outcomes, strict=True):
            if isinstance(fresh, Exception):
                continue
            report.records_read += 1
            if fresh is True:
                report.charged += 1
                report.cost_cents_charged += record.cost_cents
            else:
                report.already_charged += 1
        fresh_count = sum(1 for o in outcomes if o is True)
        self.progress = replace(
            self.progress,
            records_consumed_total=self.progress.records_consumed_total + fresh_count,
        )
        if self.metrics is not None:
            went_through = sum(1 for o in outcomes if not isinstance(o, Exception))
            self.metrics.records(
                self.tenant_id, self.source, fresh_count, went_through - fresh_count
            )

    def _maybe_log(self, where: str) -> None:
        now = time.monotonic()
        if now - self._last_log < self.charger.options.progress_log_s:
            return
        self._last_log = now
        r = self.report
        log.info(
            "ingest source %s/%s: %d records read, %d charged, %d already charged (at %s)",
            self.tenant_id,
            self.source,
            r.records_read,
            r.charged,
            r.already_charged,
            where or "-",
        )
