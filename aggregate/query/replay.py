"""Replays of the stream into the index: the whole stream at start-up (from where the file
left off; from 0 for a new or deleted file), one tenant when it arrives by placement or
after an append of uncertain outcome.

Each page of records (one batch direct get, no consumer) is folded onto the stored views:
a record that follows a view's version is applied with the type's ``apply`` program (one
call per aggregate per page), one at or below it is skipped (a live change got there first),
and an aggregate whose view is missing or behind by a gap is rebuilt from its own subject.
The page's views are then written in one transaction (a row is only replaced by a newer
position). Progress goes to the log every ``progress_every_s`` seconds.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from aggregate.domain.aggregate import program_events
from aggregate.domain.errors import AggregateError
from aggregate.query.index_store import StoredView, ViewRow

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aggregate.application.handler import TypeLookup
    from aggregate.application.ports import EventStore, StreamReader
    from aggregate.domain.envelopes import StoredRecord
    from aggregate.domain.ids import AggregateKey
    from aggregate.query.index_store import IndexStore

log = logging.getLogger(__name__)


@dataclass
class ReplayStats:
    """What one replay did."""

    messages: int = 0
    skipped: int = 0
    rows: int = 0
    rebuilt: int = 0
    seconds: float = 0.0


class Replayer:
    """Folds stream pages into the index store."""

    def __init__(
        self,
        *,
        store: IndexStore,
        reader: StreamReader,
        events: EventStore,
        types: TypeLookup,
        limiter: anyio.CapacityLimiter,
        page_size: int = 1000,
        progress_every_s: float = 5.0,
    ) -> None:
        self.store = store
        self.reader = reader
        self.events = events
        self.types = types
        self.limiter = limiter
        self.page_size = page_size
        self.progress_every_s = progress_every_s
        self.total_messages = 0
        self._unknown_types: set[str] = set()

    async def replay(
        self, tenant_id: str | None, *, after: int, end: int, replayed_through: bool = False
    ) -> ReplayStats:
        """Apply every message of ``tenant_id`` (None: every tenant) after ``after`` up to
        at least ``end`` (a stream end read before), and record ``end`` as the watermark of
        ``tenant_id`` (every tenant: as ``replayed_through`` when asked).

        Raises:
            BackendUnavailableError: the stream cannot be read; what was written stays.
        """
        what = f"tenant {tenant_id!r}" if tenant_id is not None else "every tenant"
        stats = ReplayStats()
        started = last_report = time.monotonic()
        position = after
        log.info("index replay of %s from position %d to %d", what, after, end)
        while position < end:
            page = await self.reader.read_page(tenant_id, after_seq=position, limit=self.page_size)
            stats.messages += len(page.records) + page.skipped
            stats.skipped += page.skipped
            self.total_messages += len(page.records) + page.skipped
            rows = await self._fold(page.records, stats)
            final = page.done or page.next_seq >= end
            watermarks: dict[str, int] = {}
            if final and tenant_id is not None:
                watermarks[tenant_id] = end
            elif final:
                watermarks = {row.key.tenant_id: end for row in rows}
            through = end if final and tenant_id is None and replayed_through else None
            stats.rows += await anyio.to_thread.run_sync(
                functools.partial(self.store.write, rows, watermarks, replayed_through=through),
                limiter=self.limiter,
            )
            position = max(position, page.next_seq)
            now = time.monotonic()
            if now - last_report >= self.progress_every_s:
                last_report = now
                log.info(
                    "index replay of %s: position %d of %d, %d messages, %.0f messages/s",
                    what,
                    position,
                    end,
                    stats.messages,
                    stats.messages / max(now - started, 1e-9),
                )
            if final:
                break
        stats.seconds = time.monotonic() - started
        log.info(
            "index replay of %s done at position %d: %d messages (%d unreadable), %d rows, "
            "%d aggregates rebuilt, %.2f s",
            what,
            end,
            stats.messages,
            stats.skipped,
            stats.rows,
            stats.rebuilt,
            stats.seconds,
        )
        return stats

    async def _fold(self, records: Sequence[StoredRecord], stats: ReplayStats) -> list[ViewRow]:
        by_key: dict[AggregateKey, list[StoredRecord]] = {}
        for item in records:
            by_key.setdefault(item.record.key, []).append(item)
        stored = await anyio.to_thread.run_sync(
            self.store.views, list(by_key), limiter=self.limiter
        )
        rows = []
        for key, items in by_key.items():
            view = await self._fold_one(key, stored.get(key), items, stats)
            if view is not None:
                rows.append(ViewRow(key, view.version, view.position, view.updated_at, view.state))
        return rows

    async def _fold_one(
        self,
        key: AggregateKey,
        view: StoredView | None,
        items: list[StoredRecord],
        stats: ReplayStats,
    ) -> StoredView | None:
        try:
            spec = self.types.get(key.aggregate_type)
        except AggregateError:
            if key.aggregate_type not in self._unknown_types:
                self._unknown_types.add(key.aggregate_type)
                log.warning(
                    "index replay: aggregate type %r is not configured; its messages are "
                    "not indexed",
                    key.aggregate_type,
                )
            return None
        version = view.version if view is not None else 0
        fresh = [i for i in items if i.record.last_version > version]
        if not fresh:
            return None
        if fresh[0].record.first_version != version + 1 or not _contiguous(fresh):
            stats.rebuilt += 1
            return await self._rebuild(key, spec.initial_state, upto=items[-1].seq)
        state: dict[str, Any] = view.state if view is not None else dict(spec.initial_state)
        events = [e for i in fresh for e in program_events(i.record.events)]
        try:
            state = await spec.program.apply(state, events)
        except AggregateError as exc:
            log.error("index replay: apply failed for %s, not indexed: %s", key, exc)
            return None
        last = fresh[-1]
        return StoredView(
            last.record.last_version, last.seq, last.record.events[-1].timestamp, state
        )

    async def _rebuild(
        self, key: AggregateKey, initial: dict[str, Any], *, upto: int
    ) -> StoredView | None:
        """The view of ``key`` at ``upto`` from its whole subject."""
        items = [i for i in await self.events.read(key) if i.seq <= upto]
        if not items or not _contiguous(items) or items[0].record.first_version != 1:
            log.error("index replay: the messages of %s are not contiguous; not indexed", key)
            return None
        spec = self.types.get(key.aggregate_type)
        events = [e for i in items for e in program_events(i.record.events)]
        try:
            state = await spec.program.apply(dict(initial), events)
        except AggregateError as exc:
            log.error("index replay: apply failed for %s, not indexed: %s", key, exc)
            return None
        last = items[-1]
        return StoredView(
            last.record.last_version, last.seq, last.record.events[-1].timestamp, state
        )


def _contiguous(items: Sequence[StoredRecord]) -> bool:
    pairs = itertools.pairwise(items)
    return all(b.record.first_version == a.record.last_version + 1 for a, b in pairs)


def _view_after(item: StoredRecord, state: dict[str, Any]) -> StoredView:
    record = item.record
    return StoredView(record.last_version, item.seq, record.events[-1].timestamp, state)
