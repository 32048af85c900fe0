"""``Settings``: every configuration value of the service, in one frozen dataclass.

Each field's metadata carries its parser (``aggregate.config.values``), a one-line meaning
(rendered into docs/configuration.md) and where it may be set (``aggregate.config.fieldmeta``).
The fields from core to lifecycle are declared section by section in
``aggregate.config.sections``; ``Settings`` adds metrics, tracing and the values that are not
variables, the ``repr`` that hides secrets, and the derived values.
``aggregate.config.loader`` builds a validated ``Settings`` from defaults ← config file ←
``AGGREGATE_*`` environment; constructing ``Settings(...)`` directly (tests) skips that
validation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aggregate.config import values as v
from aggregate.config.fieldmeta import Scope as Scope
from aggregate.config.fieldmeta import meta, ms, opt_path
from aggregate.config.sections import LifecycleSettings
from aggregate.domain.errors import InvalidArgumentError
from aggregate.domain.ids import DEFAULT_TENANT
from aggregate.domain.manifest import Manifest
from aggregate.domain.quota import MAX_RATE, NO_OVERRIDES, QuotaOverrides, parse_quota_overrides
from aggregate.ingest.sources import SourceConfig, parse_sources

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

ENV_PREFIX = "AGGREGATE_"


def _parse_quota_overrides(value: object) -> QuotaOverrides:
    try:
        return parse_quota_overrides(value)
    except InvalidArgumentError as exc:
        raise ValueError(exc.message) from None


@dataclass(frozen=True, slots=True, repr=False)
class Settings(LifecycleSettings):
    """The service's configuration. Build it with ``aggregate.config.load_settings``.

    Field ``x`` is environment variable ``AGGREGATE_X`` and config-file key ``x``.
    Durations are integer milliseconds (``*_ms``); ``*_seconds`` properties give floats.
    """

    # --- admin HTTP ---
    http_max_body_bytes: int = field(
        default=65_536,
        metadata=meta(
            v.int_parser(1024, 16 * 1024 * 1024),
            "Largest admin request body, bytes (1 KiB-16 MiB); larger: 413.",
            kind="int",
        ),
    )
    http_max_header_bytes: int = field(
        default=16_384,
        metadata=meta(
            v.int_parser(1024, 1024 * 1024),
            "Largest admin request head (target and headers), bytes (1 KiB-1 MiB); larger: 431.",
            kind="int",
        ),
    )
    http_max_headers: int = field(
        default=100,
        metadata=meta(
            v.int_parser(8, 10_000),
            "Most header fields in one admin request (8-10000); more: 431.",
            kind="int",
        ),
    )
    http_body_timeout_ms: int = field(
        default=10_000, metadata=ms("Deadline for an admin request body to arrive; slower: 408.")
    )
    # --- metrics ---
    metrics_tenant_labels: bool = field(
        default=True,
        metadata=meta(
            v.parse_bool, "Label metrics by tenant_id (off: bounded cardinality).", kind="bool"
        ),
    )
    # --- tracing (OpenTelemetry's standard variables, plus one of the service's) ---
    otel_exporter_otlp_endpoint: str | None = field(
        default=None,
        metadata=meta(
            v.optional(v.parse_http_url),
            "OTLP/HTTP collector base URL; traces go to <url>/v1/traces. Unset (and no "
            "traces endpoint): no tracing at all.",
            kind="url",
            env="OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    )
    otel_exporter_otlp_traces_endpoint: str | None = field(
        default=None,
        metadata=meta(
            v.optional(v.parse_http_url),
            "Full OTLP/HTTP URL for traces, used as given; wins over the base URL.",
            kind="url",
            env="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
    )
    otel_exporter_otlp_protocol: str = field(
        default="http/protobuf",
        metadata=meta(
            v.parse_otlp_protocol,
            "OTLP transport; only http/protobuf is supported.",
            kind="string",
            env="OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    )
    otel_service_name: str = field(
        default="aggregate",
        metadata=meta(
            v.parse_str,
            "service.name of the exported spans.",
            kind="string",
            env="OTEL_SERVICE_NAME",
        ),
    )
    trace_export_timeout_ms: int = field(
        default=10_000,
        metadata=ms("Deadline of one span export request, and of the final export on shutdown."),
    )
    # --- storage check (GET /health) ---
    storage_check_interval_ms: int = field(
        default=5000,
        metadata=ms("Time between checks that the snapshot database is reachable and writable."),
    )
    storage_check_timeout_ms: int = field(
        default=2000, metadata=ms("Longest one storage check may take; slower counts as failed.")
    )
    # --- protection: breakers, quotas, load shedding ---
    breaker_failure_threshold: int = field(
        default=5,
        metadata=meta(
            v.int_parser(1, 1_000_000),
            "Consecutive failures (unreachable, timed out) of the event store or the "
            "snapshot store that open its circuit breaker.",
            kind="int",
        ),
    )
    breaker_open_ms: int = field(
        default=500,
        metadata=ms("How long an open breaker refuses calls before it lets a probe through."),
    )
    quota_commands_per_second: int = field(
        default=0,
        metadata=meta(
            v.int_parser(0, MAX_RATE),
            "Default per-tenant rate quota, commands per second (0: none); over it: "
            "RESOURCE_EXHAUSTED with retry-after-ms.",
            kind="int",
        ),
    )
    quota_burst: int = field(
        default=0,
        metadata=meta(
            v.int_parser(0, MAX_RATE),
            "Default per-tenant burst: tokens of the rate quota's bucket (0: one second's worth).",
            kind="int",
        ),
    )
    quota_max_in_flight: int = field(
        default=0,
        metadata=meta(
            v.int_parser(0, MAX_RATE),
            "Default per-tenant quota of commands in flight at once (0: none).",
            kind="int",
        ),
    )
    quota_pace_refusals_per_second: int = field(
        default=10,
        metadata=meta(
            v.int_parser(0, MAX_RATE),
            "Refusals a second, beyond its rate quota, a flooding tenant gets on connections "
            "that carry only its calls and on its SubmitCommands streams: after one free "
            "second those are read at its quota plus this many calls a second (0: never "
            "slowed).",
            kind="int",
        ),
    )
    quota_overrides: QuotaOverrides = field(
        default_factory=lambda: NO_OVERRIDES,
        metadata=meta(
            _parse_quota_overrides,
            "Per-tenant quota overrides (config file only): tenant_id -> "
            "{commands_per_second, burst, max_in_flight}.",
            kind="mapping",
            scope="file",
        ),
    )
    quota_key: str = field(
        default="aggregate_quotas",
        metadata=meta(
            v.parse_kv_key,
            "KV key (in the placement bucket) of live per-tenant quota overrides, watched.",
            kind="KV key",
        ),
    )
    overload_retry_after_ms: int = field(
        default=100,
        metadata=ms(
            "retry-after-ms of a command shed at max_in_flight or over an in-flight quota."
        ),
    )
    # --- usage ingestion ---
    ingest_sources: tuple[SourceConfig, ...] = field(
        default=(),
        metadata=meta(
            parse_sources,
            "Usage sources to ingest: a list of directory and JetStream sources "
            "(JSON text in the environment).",
            kind="list",
        ),
    )
    ingest_interval_ms: int = field(
        default=300_000,
        metadata=ms("How often `serve` runs the ingestor over every source.", minimum=1000),
    )
    ingest_aggregate_type: str = field(
        default="billing-account",
        metadata=meta(
            v.parse_aggregate_type, "The ledger aggregate type records are charged to.", kind="name"
        ),
    )
    ingest_progress_bucket: str = field(
        default="AGGREGATE_INGEST_PROGRESS",
        metadata=meta(
            v.name_parser("KV bucket"), "NATS KV bucket of per-source progress.", kind="name"
        ),
    )
    ingest_consumed_bucket: str = field(
        default="AGGREGATE_INGEST_CONSUMED",
        metadata=meta(
            v.name_parser("KV bucket"), "NATS KV bucket of the consumed-record index.", kind="name"
        ),
    )
    ingest_max_file_bytes: int = field(
        default=8 * 1024 * 1024,
        metadata=meta(
            v.int_parser(1024, 256 * 1024 * 1024),
            "Largest batch file (or message), bytes; larger halts the source.",
            kind="int",
        ),
    )
    ingest_max_records_per_batch: int = field(
        default=100_000,
        metadata=meta(v.int_parser(1, 10_000_000), "Most records in one batch.", kind="int"),
    )
    ingest_max_files_per_source: int = field(
        default=2000,
        metadata=meta(v.int_parser(1, 5000), "Most batch files in one node directory.", kind="int"),
    )
    ingest_concurrency: int = field(
        default=64,
        metadata=meta(
            v.int_parser(1, 1024), "Records of one source in flight at once.", kind="int"
        ),
    )
    ingest_progress_log_ms: int = field(
        default=10_000, metadata=ms("Interval of a long run's progress log line per source.")
    )
    ingest_fetch_timeout_ms: int = field(
        default=2000,
        metadata=ms("Wait for JetStream source messages (one fetch); none: the run ends."),
    )
    ingest_ack_wait_ms: int = field(
        default=60_000,
        metadata=ms("JetStream source consumers' ack wait (redelivery of unacknowledged batches)."),
    )
    # --- watches (WatchAggregates) ---
    watch_queue_changes: int = field(
        default=1000,
        metadata=meta(
            v.int_parser(1, 1_000_000),
            "Changes one watch may have waiting to be sent; more: the watch ends with "
            "RESOURCE_EXHAUSTED and x-resume-position.",
            kind="int",
        ),
    )
    watch_queue_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata=meta(
            v.int_parser(1024, 2**31 - 1),
            "Bytes of changes one watch may have waiting to be sent (estimated); more: as "
            "watch_queue_changes.",
            kind="int",
        ),
    )
    watch_buffer_changes: int = field(
        default=10_000,
        metadata=meta(
            v.int_parser(0, 10_000_000),
            "Recent changes kept in memory for watches that resume; older ones are read "
            "from the stream.",
            kind="int",
        ),
    )
    watch_buffer_bytes: int = field(
        default=32 * 1024 * 1024,
        metadata=meta(
            v.int_parser(1024, 2**40),
            "Bytes of recent changes kept in memory for resuming watches (estimated).",
            kind="int",
        ),
    )
    max_watchers: int = field(
        default=1000,
        metadata=meta(
            v.int_parser(1, 1_000_000),
            "Watches open at once on this node; more: RESOURCE_EXHAUSTED.",
            kind="int",
        ),
    )
    # --- read side: the index and queries ---
    index_enabled: bool = field(
        default=True,
        metadata=meta(
            v.parse_bool,
            "Keep the query index and serve QueryAggregates (off: UNIMPLEMENTED).",
            kind="bool",
        ),
    )
    index_path: Path | None = field(
        default=None,
        metadata=opt_path(
            "The index file (derived data, rebuilt from the stream when missing); unset: "
            "index.db under storage_path."
        ),
    )
    index_batch_size: int = field(
        default=500,
        metadata=meta(
            v.int_parser(1, 100_000),
            "Changes written in one index transaction at most (1-100000).",
            kind="int",
        ),
    )
    index_batch_interval_ms: int = field(
        default=5,
        metadata=ms("Least time between two index batches (after a quiet moment: at once)."),
    )
    index_replay_page: int = field(
        default=1000,
        metadata=meta(
            v.int_parser(1, 10_000),
            "Messages read per request when the index is rebuilt from the stream (1-10000).",
            kind="int",
        ),
    )
    index_max_wait_ms: int = field(
        default=5000,
        metadata=ms(
            "Longest wait of a query for min_position or for its tenant's rebuild (within the "
            "call's deadline)."
        ),
    )
    query_max_filter_chars: int = field(
        default=4096,
        metadata=meta(v.int_parser(1, 65_536), "Longest filter, characters (1-65536).", kind="int"),
    )
    query_default_page_size: int = field(
        default=50,
        metadata=meta(v.int_parser(1, 10_000), "Page size when a query asks for 0.", kind="int"),
    )
    query_max_page_size: int = field(
        default=1000,
        metadata=meta(
            v.int_parser(1, 10_000), "Largest page a query may ask for (1-10000).", kind="int"
        ),
    )
    query_max_sqlite_steps: int = field(
        default=10_000_000,
        metadata=meta(
            v.int_parser(1000),
            "SQLite work one query may do (virtual machine steps); more: RESOURCE_EXHAUSTED.",
            kind="int",
        ),
    )
    query_threads: int = field(
        default=4,
        metadata=meta(
            v.int_parser(1, 64), "Queries read from the index at once (1-64).", kind="int"
        ),
    )
    event_loop: v.EventLoop = field(
        default_factory=v.default_event_loop,
        metadata=meta(
            v.parse_event_loop,
            "Event loop of the command path: asyncio (the default) or uvloop.",
            kind="enum",
        ),
    )
    # --- not variables ---
    aggregate_types: Manifest | None = field(
        default=None,
        metadata=meta(
            v.parse_str,  # never used: the loader parses this section as a manifest
            "Inline manifest (config file only), same shape as a manifest file's aggregate_types.",
            kind="mapping",
            scope="file",
        ),
    )
    origins: Mapping[str, str] = field(
        default_factory=dict, compare=False, metadata={"scope": "internal"}
    )
    """Where each non-default value came from, by field name (for errors and ``check``)."""

    def __post_init__(self) -> None:
        if not self.multi_tenant and self.default_tenant_id is None:
            object.__setattr__(self, "default_tenant_id", DEFAULT_TENANT)

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            if f.metadata.get("scope") == "internal":
                continue
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value is not None:
                shown = "'***'"
            elif f.name == "nats_url":
                shown = repr(v.redact_url_credentials(value))
            elif isinstance(value, Manifest):
                shown = f"Manifest({sorted(value.types)!r})"
            else:
                shown = repr(value)
            parts.append(f"{f.name}={shown}")
        return f"Settings({', '.join(parts)})"

    def origin_of(self, name: str) -> str:
        """Where field ``name`` came from: ``default``, ``environment variable
        AGGREGATE_X`` or ``config file <path>, key x``."""
        return self.origins.get(name, "default")

    # --- derived values ---
    @property
    def index_file(self) -> Path:
        """Where the index lives: ``index_path``, else ``index.db`` under ``storage_path``."""
        return self.index_path if self.index_path is not None else self.storage_path / "index.db"

    @property
    def http_body_timeout_seconds(self) -> float:
        """``http_body_timeout_ms`` in seconds."""
        return self.http_body_timeout_ms / 1000

    @property
    def nats_embedded(self) -> bool:
        """True when the service starts its bundled nats-server."""
        return self.nats_url == v.EMBEDDED

    @property
    def nats_servers(self) -> tuple[str, ...]:
        """The server URLs to connect to; empty when embedded."""
        return () if self.nats_embedded else tuple(self.nats_url.split(","))

    @property
    def http_bind(self) -> tuple[str, int]:
        """``http_addr`` as ``(host, port)``."""
        return v.split_host_port(self.http_addr)

    @property
    def grpc_bind(self) -> tuple[str, int]:
        """``grpc_addr`` as ``(host, port)``."""
        return v.split_host_port(self.grpc_addr)

    @property
    def otlp_traces_url(self) -> str | None:
        """Where spans are exported (OTLP/HTTP), or None: tracing is off."""
        if self.otel_exporter_otlp_traces_endpoint is not None:
            return self.otel_exporter_otlp_traces_endpoint
        if self.otel_exporter_otlp_endpoint is not None:
            return self.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        return None

    @property
    def trace_export_timeout_seconds(self) -> float:
        """``trace_export_timeout_ms`` in seconds."""
        return self.trace_export_timeout_ms / 1000

    @property
    def program_max_memory_bytes(self) -> int:
        """``program_max_memory_mb`` in bytes (for ``RLIMIT_AS``)."""
        return self.program_max_memory_mb * 1024 * 1024

    @property
    def program_timeout_seconds(self) -> float:
        """``program_timeout_ms`` in seconds."""
        return self.program_timeout_ms / 1000

    @property
    def program_hard_timeout_seconds(self) -> float:
        """``program_hard_timeout_ms`` in seconds."""
        return self.program_hard_timeout_ms / 1000

    @property
    def duplicate_window_seconds(self) -> float:
        """``duplicate_window_ms`` in seconds."""
        return self.duplicate_window_ms / 1000

    @property
    def nats_timeout_seconds(self) -> float:
        """``nats_timeout_ms`` in seconds."""
        return self.nats_timeout_ms / 1000

    @property
    def nats_connect_timeout_seconds(self) -> float:
        """``nats_connect_timeout_ms`` in seconds."""
        return self.nats_connect_timeout_ms / 1000

    @property
    def retry_backoff_seconds(self) -> float:
        """``retry_backoff_ms`` in seconds."""
        return self.retry_backoff_ms / 1000

    @property
    def retry_backoff_max_seconds(self) -> float:
        """``retry_backoff_max_ms`` in seconds."""
        return self.retry_backoff_max_ms / 1000

    @property
    def shutdown_timeout_seconds(self) -> float:
        """``shutdown_timeout_ms`` in seconds."""
        return self.shutdown_timeout_ms / 1000

    @property
    def drain_timeout_seconds(self) -> float:
        """``drain_timeout_ms`` in seconds."""
        return self.drain_timeout_ms / 1000

    @property
    def breaker_open_seconds(self) -> float:
        """``breaker_open_ms`` in seconds."""
        return self.breaker_open_ms / 1000

    @property
    def snapshot_flush_timeout_seconds(self) -> float:
        """``snapshot_flush_timeout_ms`` in seconds."""
        return self.snapshot_flush_timeout_ms / 1000

    @property
    def storage_check_interval_seconds(self) -> float:
        """``storage_check_interval_ms`` in seconds."""
        return self.storage_check_interval_ms / 1000

    @property
    def storage_check_timeout_seconds(self) -> float:
        """``storage_check_timeout_ms`` in seconds."""
        return self.storage_check_timeout_ms / 1000

    @property
    def shard_ttl_seconds(self) -> float:
        """``shard_ttl_ms`` in seconds."""
        return self.shard_ttl_ms / 1000

    @property
    def shard_heartbeat_seconds(self) -> float:
        """``shard_heartbeat_ms`` in seconds."""
        return self.shard_heartbeat_ms / 1000

    @property
    def shard_refresh_seconds(self) -> float:
        """``shard_refresh_ms`` in seconds."""
        return self.shard_refresh_ms / 1000

    @property
    def move_timeout_seconds(self) -> float:
        """``move_timeout_ms`` in seconds."""
        return self.move_timeout_ms / 1000

    @property
    def ingest_interval_seconds(self) -> float:
        """``ingest_interval_ms`` in seconds."""
        return self.ingest_interval_ms / 1000


_ENV_NAMES = {
    f.name: f.metadata["env"] for f in dataclasses.fields(Settings) if "env" in f.metadata
}


def env_name(field_name: str) -> str:
    """The environment variable of a settings field: ``AGGREGATE_`` + upper-case name, or
    the standard name of an OpenTelemetry variable (``OTEL_...``)."""
    return _ENV_NAMES.get(field_name) or ENV_PREFIX + field_name.upper()


def settable_fields(scope: Literal["env", "file"]) -> dict[str, dataclasses.Field[Any]]:
    """The fields that may be set in ``scope``, by name."""
    allowed = {"env": ("any", "env"), "file": ("any", "file")}[scope]
    return {f.name: f for f in dataclasses.fields(Settings) if f.metadata["scope"] in allowed}
