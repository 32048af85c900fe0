"""Wiring of the read side's index into the island (``IslandCore``): the index file, its
expression indexes from the manifest, the stream reader, and the ``Indexer`` fed by the
change feed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio.to_thread

from aggregate.adapters.jetstream.stream_reader import JetStreamStreamReader
from aggregate.query.index_store import IndexStore, token_key
from aggregate.query.indexer import Indexer, IndexSettings
from aggregate.query.plan import QueryLimits, index_statements

if TYPE_CHECKING:
    import contextlib

    from nats.aio.client import Client

    from aggregate.application.changes import ChangeFeed
    from aggregate.application.gate import TenantGate
    from aggregate.application.handler import TypeLookup
    from aggregate.application.ports import EventStore
    from aggregate.config import Settings
    from aggregate.domain.manifest import Manifest
    from aggregate.domain.placement import PlacementDecision


def hosts_every_tenant(decision: PlacementDecision) -> bool:
    """No placement map and no allowlist: this node writes every tenant."""
    return decision.placement is None and decision.hosted_tenants is None


def index_settings(settings: Settings) -> IndexSettings:
    return IndexSettings(
        batch_size=settings.index_batch_size,
        batch_interval_s=settings.index_batch_interval_ms / 1000,
        replay_page=settings.index_replay_page,
        max_wait_s=settings.index_max_wait_ms / 1000,
        query_threads=settings.query_threads,
        retry_s=1.0,
        limits=query_limits(settings),
    )


def query_limits(settings: Settings) -> QueryLimits:
    """The filter language's limits, for queries and watches alike."""
    return QueryLimits(
        max_filter_chars=settings.query_max_filter_chars,
        default_page_size=settings.query_default_page_size,
        max_page_size=settings.query_max_page_size,
        max_sqlite_steps=settings.query_max_sqlite_steps,
    )


async def open_indexer(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    nc: Client,
    events: EventStore,
    feed: ChangeFeed,
    types: TypeLookup,
    manifest: Manifest,
    gate: TenantGate,
) -> Indexer:
    """The node's indexer, registered as a consumer of ``feed``; closed by ``stack``.

    Raises:
        ConfigError: the index file or its token key cannot be opened or created.
    """
    path = settings.index_file
    store = await anyio.to_thread.run_sync(IndexStore, path)
    stack.callback(store.close)
    statements = [
        statement
        for name, spec in manifest.types.items()
        if spec.indexes  # (the programs of every type, `*`, have none)
        for statement in index_statements(name, spec.indexes)
    ]
    await anyio.to_thread.run_sync(store.create_indexes, statements)
    key = await anyio.to_thread.run_sync(token_key, path)
    reader = JetStreamStreamReader(
        nc, stream=settings.stream_name, request_timeout_s=settings.nats_timeout_seconds
    )
    stack.push_async_callback(reader.aclose)
    indexer = Indexer(
        store=store,
        feed=feed,
        reader=reader,
        events=events,
        types=types,
        token_key=key,
        settings=index_settings(settings),
        hosts_every_tenant=hosts_every_tenant(gate.decision),
    )
    feed.consumers.append(indexer)
    return indexer
