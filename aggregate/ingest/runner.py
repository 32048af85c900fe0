"""The ingestor: one run over every configured source (or one), and the operator's reads.

Runs on the asyncio island beside the command handler (written with anyio, so tests run it
under Trio too). Sources run concurrently, at most ``SOURCES_AT_ONCE`` at a time; each one's
failure is its own (recorded in its progress and in the summary), the others go on. Runs of
one ingestor are serialized.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from aggregate.domain.errors import (
    AggregateError,
    InvalidArgumentError,
    TenantUnavailableError,
    quote,
)
from aggregate.domain.status import status_of
from aggregate.ingest.charge import Charger, SourceRun, utc_now
from aggregate.ingest.directory import DirectorySource, node_directories, run_directory
from aggregate.ingest.jetstream_source import JetStreamSource, run_jetstream
from aggregate.ingest.progress import SourceError
from aggregate.ingest.sources import DirectoryRoot, JetStreamSourceConfig

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nats.aio.client import Client

    from aggregate.application.handler import CommandHandler
    from aggregate.application.ingest_ports import ConsumedIndex, ProgressStore
    from aggregate.ingest.charge import IngestOptions, SourceReport
    from aggregate.ingest.metrics import IngestMetrics
    from aggregate.ingest.sources import SourceConfig

log = logging.getLogger(__name__)
SOURCES_AT_ONCE = 4
MAX_NODES_PER_ROOT = 1000
"""Node directories read under one directory root (the summary stays bounded)."""
MAX_PAGE = 1000
Source = DirectorySource | JetStreamSource


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What one run did: a report per source, in source order."""

    started_at: str
    finished_at: str
    reports: list[SourceReport]
    problems: list[str]

    @property
    def ok(self) -> bool:
        """No source halted or failed, and every root could be listed (a source whose tenant
        another node hosts is left to that node)."""
        return not self.problems and all(
            r.status in ("consumed", "skipped", "not_hosted") for r in self.reports
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "charged": sum(r.charged for r in self.reports),
            "already_charged": sum(r.already_charged for r in self.reports),
            "cost_cents_charged": sum(r.cost_cents_charged for r in self.reports),
            "sources": [r.as_dict() for r in self.reports],
            "problems": self.problems,
        }


class Ingestor:
    """Reads the configured sources and charges their records through ``handler``."""

    def __init__(
        self,
        *,
        handler: CommandHandler,
        sources: Sequence[SourceConfig],
        progress: ProgressStore,
        index: ConsumedIndex,
        options: IngestOptions,
        nc: Client | None = None,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.configs = tuple(sources)
        self.progress = progress
        self.index = index
        self.options = options
        self.nc = nc
        self.metrics = metrics
        self.charger = Charger(handler, index, options)
        self._lock = anyio.Lock()

    def _tenant(self, config: SourceConfig) -> str:
        return config.tenant or self.options.default_tenant

    async def resolve(self) -> tuple[list[Source], list[str]]:
        """The concrete sources (directory roots expanded to their nodes) and the roots
        that could not be listed."""
        sources: list[Source] = []
        problems: list[str] = []
        seen: set[tuple[str, str]] = set()
        for number, config in enumerate(self.configs, 1):
            tenant = self._tenant(config)
            found: list[Source] = []
            if isinstance(config, DirectoryRoot):
                try:
                    nodes = await anyio.to_thread.run_sync(node_directories, config.root)
                except OSError as exc:
                    problems.append(
                        f"source {number}: cannot list the nodes/ directory of its root "
                        f"({exc.strerror or type(exc).__name__})"
                    )
                    continue
                if len(nodes) > MAX_NODES_PER_ROOT:
                    problems.append(
                        f"source {number}: {len(nodes)} node directories, more than "
                        f"{MAX_NODES_PER_ROOT}; only the first {MAX_NODES_PER_ROOT} are read"
                    )
                    nodes = nodes[:MAX_NODES_PER_ROOT]
                found = [
                    DirectorySource(tenant, node, config.root / "nodes" / node) for node in nodes
                ]
            elif isinstance(config, JetStreamSourceConfig):
                found = [JetStreamSource(tenant, config.name, config.stream, config.subject)]
            for source in found:
                if (tenant, source.name) in seen:
                    problems.append(
                        f"source {number}: {source.name} is already a source of tenant "
                        f"{tenant}; skipped"
                    )
                    continue
                seen.add((tenant, source.name))
                sources.append(source)
        return sources, problems

    async def run_once(self, only: str | None = None) -> RunSummary:
        """One run over every source (or the source named ``only``).

        Raises:
            InvalidArgumentError: ``only`` names no configured source.
        """
        async with self._lock:
            started = utc_now()
            sources, problems = await self.resolve()
            if only is not None:
                sources = [s for s in sources if s.name == only]
                if not sources:
                    raise InvalidArgumentError(f"no ingestion source is named {quote(only)}")
            reports: list[SourceReport | None] = [None] * len(sources)
            limiter = anyio.CapacityLimiter(SOURCES_AT_ONCE)

            async def one(i: int, source: Source) -> None:
                async with limiter:
                    reports[i] = await self._run_source(source)

            async with anyio.create_task_group() as tg:
                for i, source in enumerate(sources):
                    tg.start_soon(one, i, source)
            done = [r for r in reports if r is not None]
            summary = RunSummary(started, utc_now(), done, problems)
            log.info(
                "ingest run: %d sources, %d records charged, %d already charged, %s",
                len(done),
                sum(r.charged for r in done),
                sum(r.already_charged for r in done),
                "ok" if summary.ok else "with errors",
            )
            return summary

    async def _run_source(self, source: Source) -> SourceReport:
        run = SourceRun(
            source.tenant_id, source.name, source.kind, self.charger, self.progress, self.metrics
        )
        try:
            await run.load()
            if isinstance(source, DirectorySource):
                await run_directory(source, run)
            else:
                if self.nc is None:
                    raise InvalidArgumentError("JetStream sources need a NATS connection")
                await run_jetstream(source, run, self.nc)
        except TenantUnavailableError as exc:
            # Placement applies: another node hosts the tenant (or it is draining here);
            # that node ingests it. What was charged stays charged; progress is saved.
            run.report.status = "not_hosted"
            run.report.error = SourceError(f"UNAVAILABLE: {exc.message}", at=utc_now())
            log.info("ingest source %s/%s: tenant not hosted here", source.tenant_id, source.name)
        except (AggregateError, OSError) as exc:
            reason = exc.message if isinstance(exc, AggregateError) else (
                f"cannot read the source: {exc.strerror or type(exc).__name__}"
            )  # fmt: skip
            if isinstance(exc, AggregateError):
                reason = f"{status_of(exc)[0]}: {reason}"
            run.report.status = "failed"
            run.report.error = SourceError(reason, at=utc_now())
            log.warning("ingest source %s/%s failed: %s", source.tenant_id, source.name, reason)
            if self.metrics is not None:
                self.metrics.error(source.tenant_id, source.name)
        if self.metrics is not None:
            lag = run.report.lag
            if isinstance(source, DirectorySource):
                lag = sum(1 for m in run.progress.files.values() if not m.complete)
            self.metrics.finished(source.tenant_id, source.name, lag=lag, at=time.time())
        return run.report

    async def sources_view(self) -> list[dict[str, Any]]:
        """Every source with its stored progress (``GET /admin/ingest/sources``)."""
        sources, problems = await self.resolve()
        out: list[dict[str, Any]] = []
        for source in sources:
            progress, _ = await self.progress.load(source.tenant_id, source.name)
            out.append(
                {"tenant_id": source.tenant_id, "source": source.name, "kind": source.kind}
                | progress.view()
            )
        out.extend({"problem": p} for p in problems)
        return out

    async def consumed(
        self, *, tenant_id: str | None, source: str | None, after: int, limit: int
    ) -> dict[str, Any]:
        """A page of the consumed-record index (``GET /admin/ingest/consumed``)."""
        tenant = tenant_id or self.options.default_tenant
        page = await self.index.page(
            tenant, after=after, limit=max(1, min(limit, MAX_PAGE)), source=source
        )
        return {
            "tenant_id": tenant,
            "records": [{"position": seq} | entry.as_dict() for seq, entry in page.entries],
            "next_after": page.next_after,
        }
