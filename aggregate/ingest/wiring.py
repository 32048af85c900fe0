"""Building the ingestor from ``Settings`` (on the island, beside the handler)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aggregate.domain.errors import ConfigError, UnknownAggregateTypeError
from aggregate.domain.ids import DEFAULT_TENANT
from aggregate.ingest.charge import IngestOptions
from aggregate.ingest.kv import NatsConsumedIndex, NatsProgressStore
from aggregate.ingest.metrics import IngestMetrics
from aggregate.ingest.runner import Ingestor

if TYPE_CHECKING:
    from nats.aio.client import Client

    from aggregate.adapters.metrics import Metrics
    from aggregate.application.handler import CommandHandler, TypeLookup
    from aggregate.config import Settings


def ingest_options(settings: Settings) -> IngestOptions:
    return IngestOptions(
        aggregate_type=settings.ingest_aggregate_type,
        default_tenant=settings.default_tenant_id or DEFAULT_TENANT,
        max_file_bytes=settings.ingest_max_file_bytes,
        max_records_per_batch=settings.ingest_max_records_per_batch,
        max_files_per_source=settings.ingest_max_files_per_source,
        concurrency=settings.ingest_concurrency,
        progress_log_s=settings.ingest_progress_log_ms / 1000,
        fetch_timeout_s=settings.ingest_fetch_timeout_ms / 1000,
        ack_wait_s=settings.ingest_ack_wait_ms / 1000,
    )


def build_ingestor(
    settings: Settings,
    handler: CommandHandler,
    types: TypeLookup,
    nc: Client,
    metrics: Metrics | None,
) -> Ingestor:
    """The ingestor of the configured sources, on NATS KV progress and index.

    Raises:
        ConfigError: the ledger aggregate type is not configured.
    """
    try:
        types.get(settings.ingest_aggregate_type)
    except UnknownAggregateTypeError:
        raise ConfigError(
            f"ingest_aggregate_type {settings.ingest_aggregate_type!r} "
            f"({settings.origin_of('ingest_aggregate_type')}) is not a configured aggregate "
            "type: serve the billing example's ledger (--example billing) or name your own"
        ) from None
    timeout = settings.nats_timeout_seconds
    return Ingestor(
        handler=handler,
        sources=settings.ingest_sources,
        progress=NatsProgressStore(
            nc,
            settings.ingest_progress_bucket,
            timeout_s=timeout,
            replicas=settings.stream_replicas,
        ),
        index=NatsConsumedIndex(
            nc,
            settings.ingest_consumed_bucket,
            timeout_s=timeout,
            replicas=settings.stream_replicas,
        ),
        options=ingest_options(settings),
        nc=nc,
        metrics=(
            IngestMetrics(metrics.registry, tenant_labels=settings.metrics_tenant_labels)
            if metrics is not None
            else None
        ),
    )
