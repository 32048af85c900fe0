"""The ingestor as a Trio subsystem of ``serve``: periodic runs and the operator's calls.

The ingestor itself lives on the asyncio island beside the handler; this side only decides
when it runs (every ``ingest_interval_ms``, and on ``POST /admin/ingest/run``) and crosses
the bridge once per call.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from aggregate.domain.errors import AggregateError

if TYPE_CHECKING:
    from aggregate.bridge import Island
    from aggregate.ingest.runner import Ingestor

log = logging.getLogger(__name__)


class IngestSubsystem:
    """Runs the ingestor now and then; answers the admin API's ingestion routes."""

    def __init__(self, island: Island, ingestor: Ingestor, *, interval_s: float) -> None:
        self.island = island
        self.ingestor = ingestor
        self.interval_s = interval_s
        self.runs = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """A run at once, then one every ``interval_s``, until cancelled. A failed run is
        logged; the next one comes at its time.

        Cancellation: a run in progress is cancelled on the island too (what it charged stays
        charged; its progress is saved at the last finished file or batch).
        """
        task_status.started()
        while True:
            try:
                await self.run_now(None)
            except AggregateError as exc:
                log.warning("periodic ingest run failed: %s", exc.message)
            await trio.sleep(self.interval_s)

    async def run_now(self, source: str | None) -> dict[str, Any]:
        """One run (of every source, or of ``source``); its summary.

        Raises:
            InvalidArgumentError: ``source`` names no configured source.
        """
        summary = await self.island.run(self.ingestor.run_once, source)
        self.runs += 1
        return summary.as_dict()

    async def sources(self) -> list[dict[str, Any]]:
        return await self.island.run(self.ingestor.sources_view)

    async def consumed(
        self, *, tenant_id: str | None, source: str | None, after: int, limit: int
    ) -> dict[str, Any]:
        async def page() -> dict[str, Any]:
            return await self.ingestor.consumed(
                tenant_id=tenant_id, source=source, after=after, limit=limit
            )

        return await self.island.run(page)
