"""In-memory progress store and consumed-record index, for pure tests of the ingestor."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aggregate.application.ingest_ports import Claim, ConsumedPage, ProgressConflictError
from aggregate.ingest.progress import ConsumedEntry, SourceProgress

if TYPE_CHECKING:
    from aggregate.application.handler import CommandHandler
    from aggregate.application.ports import EventStore


class InMemoryProgressStore:
    """``ProgressStore`` in a dict, with revisions like NATS KV's."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], tuple[bytes, int]] = {}
        self._revision = 0

    async def load(self, tenant_id: str, source: str) -> tuple[SourceProgress, int]:
        stored = self.values.get((tenant_id, source))
        if stored is None:
            return SourceProgress(), 0
        return SourceProgress.from_json(stored[0]), stored[1]

    async def save(
        self, tenant_id: str, source: str, progress: SourceProgress, revision: int
    ) -> int:
        stored = self.values.get((tenant_id, source))
        if (stored[1] if stored else 0) != revision:
            raise ProgressConflictError(f"progress of {tenant_id}.{source} changed meanwhile")
        self._revision += 1
        self.values[(tenant_id, source)] = (progress.to_json(), self._revision)
        return self._revision

    async def delete(self, tenant_id: str, source: str) -> None:
        self.values.pop((tenant_id, source), None)


class InMemoryConsumedIndex:
    """``ConsumedIndex`` in a dict; positions count writes like a stream's sequence."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], tuple[int, ConsumedEntry]] = {}
        self._position = 0

    async def claim(self, tenant_id: str, entry: ConsumedEntry) -> Claim:
        stored = self.entries.get((tenant_id, entry.idempotency_key))
        if stored is not None:
            return Claim(stored[1], False, stored[0])
        self._position += 1
        self.entries[(tenant_id, entry.idempotency_key)] = (self._position, entry)
        return Claim(entry, True, self._position)

    async def release(self, tenant_id: str, idempotency_key: str, revision: int) -> None:
        stored = self.entries.get((tenant_id, idempotency_key))
        if stored is not None and stored[0] == revision:
            del self.entries[(tenant_id, idempotency_key)]

    async def get(self, tenant_id: str, idempotency_key: str) -> ConsumedEntry | None:
        stored = self.entries.get((tenant_id, idempotency_key))
        return stored[1] if stored else None

    async def page(
        self, tenant_id: str, *, after: int, limit: int, source: str | None
    ) -> ConsumedPage:
        found = sorted(
            (seq, entry)
            for (tenant, _), (seq, entry) in self.entries.items()
            if tenant == tenant_id and seq > after
        )[:limit]
        entries = [(s, e) for s, e in found if source is None or e.source == source]
        return ConsumedPage(entries, found[-1][0] if found else None)


def billing_handler(
    store: EventStore | None = None, *, history_limit: int = 1000
) -> CommandHandler:
    """A command handler serving the billing example's ledger (inline Starlark) on an
    in-memory event store (or ``store``). A small ``history_limit`` makes repeats reach the
    ledger's own check instead of the command-id history."""
    import dataclasses

    from aggregate.application.handler import CommandHandler, HandlerSettings
    from aggregate.config.manifest import example_manifest_path, load_manifest
    from aggregate.domain.manifest import Isolation
    from aggregate.programs.registry import build_specs
    from aggregate.testing.memory_store import InMemoryEventStore
    from aggregate.testing.programs import StaticTypes

    manifest = load_manifest(example_manifest_path("billing"))
    manifest = dataclasses.replace(
        manifest,
        types={
            name: dataclasses.replace(spec, isolation=Isolation.INLINE)
            for name, spec in manifest.types.items()
        },
    )
    return CommandHandler(
        store=store or InMemoryEventStore(),
        types=StaticTypes(build_specs(manifest)),
        settings=HandlerSettings(retry_backoff_s=0, history_limit=history_limit),
    )
