"""The sections of ``Settings``, one frozen dataclass each, from core to lifecycle.

Each class adds one section's fields to the class before it, and ``Settings``
(``aggregate.config.settings``) adds the last sections to ``LifecycleSettings``: a
dataclass lists the fields of its bases first, so ``dataclasses.fields(Settings)`` keeps
the order of docs/configuration.md. Only ``Settings`` is meant to be built; field ``x`` is
environment variable ``AGGREGATE_X`` and config-file key ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aggregate.config import values as v
from aggregate.config.fieldmeta import meta, ms, opt_path
from aggregate.domain.json_input import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_INT_DIGITS,
    MAX_DEPTH_LIMIT,
    MAX_INT_DIGITS_LIMIT,
)
from aggregate.domain.manifest import Isolation, Language


@dataclass(frozen=True, slots=True, repr=False)
class CoreSettings:
    """Core: where NATS and the snapshots are, the listening addresses, the admin token
    and logging."""

    config_path: Path | None = field(
        default=None,
        metadata=opt_path(
            "YAML/TOML/JSON config file, by extension (environment only).", scope="env"
        ),
    )
    nats_url: str = field(
        default=v.EMBEDDED,
        metadata=meta(
            v.parse_nats_url,
            "`embedded` (or empty): start the bundled nats-server under storage_path, loopback "
            "only. Otherwise comma-separated `nats://`, `tls://`, `ws://` or `wss://` URLs.",
            kind="url list",
        ),
    )
    storage_path: Path = field(
        default=Path("./data"),
        metadata=meta(
            v.parse_path,
            "Directory of the snapshot database (and the embedded nats-server's store).",
            kind="path",
        ),
    )
    snapshot_threshold: int = field(
        default=10,
        metadata=meta(
            v.int_parser(1),
            "Snapshot an aggregate when this many events follow its last one.",
            kind="int",
        ),
    )
    max_retries: int = field(
        default=3,
        metadata=meta(
            v.int_parser(0),
            "Retries of a command after a version conflict, then ABORTED.",
            kind="int",
        ),
    )
    http_addr: str = field(
        default="0.0.0.0:8080",
        metadata=meta(v.parse_host_port, "Admin HTTP bind address, host:port.", kind="host:port"),
    )
    grpc_addr: str = field(
        default="0.0.0.0:50051",
        metadata=meta(v.parse_host_port, "gRPC bind address, host:port.", kind="host:port"),
    )
    admin_token: str | None = field(
        default=None,
        metadata=meta(
            v.optional(v.parse_str),
            "Bearer token for /admin/*; unset: /admin/* answers loopback clients only. Secret.",
            kind="string",
            secret=True,
        ),
    )
    log_level: str = field(
        default="info",
        metadata=meta(
            v.parse_log_level,
            "debug, info, warning, error or critical.",
            kind="string",
        ),
    )
    logger_socket: Path | None = field(
        default=None,
        metadata=opt_path(
            "Unix socket that also receives the JSON log lines (edge-logger-client)."
        ),
    )
    library_log_level: str = field(
        default="warning",
        metadata=meta(
            v.parse_log_level,
            "Level of the libraries' loggers (grpclib, h2, hpack, nats, hypercorn, asyncio, "
            "...); log_level is the service's own.",
            kind="string",
        ),
    )
    access_log: v.AccessLogMode = field(
        default=v.AccessLogMode.OFF,
        metadata=meta(
            v.enum_parser(v.AccessLogMode),
            "One info line per gRPC call (logger aggregate.access): off, on, or sampled "
            "(every call not OK, one in access_log_sample_every of the OK ones).",
            kind="enum",
        ),
    )
    access_log_sample_every: int = field(
        default=100,
        metadata=meta(
            v.int_parser(1),
            "access_log=sampled: log one in this many calls that end OK.",
            kind="int",
        ),
    )


@dataclass(frozen=True, slots=True, repr=False)
class TenancySettings(CoreSettings):
    """Tenancy and placement: the tenant of a request and the shard that serves it."""

    multi_tenant: bool = field(
        default=True,
        metadata=meta(
            v.parse_bool,
            "Tenant ids come from x-tenant-id. Off: one tenant, default_tenant_id.",
            kind="bool",
        ),
    )
    default_tenant_id: str | None = field(
        default=None,
        metadata=meta(
            v.optional(v.parse_tenant_id),
            "Tenant of requests without x-tenant-id. Unset: INVALID_ARGUMENT when multi-tenant, "
            "`_default` when not.",
            kind="tenant id",
        ),
    )
    shard_id: str = field(
        default="local",
        metadata=meta(
            v.name_parser("shard id"),
            "This node's shard in the placement map.",
            kind="name",
        ),
    )
    placement_bucket: str = field(
        default="AGGREGATE_PLACEMENT",
        metadata=meta(
            v.name_parser("KV bucket"),
            "NATS KV bucket holding the placement map.",
            kind="name",
        ),
    )
    placement_key: str = field(
        default="aggregate_placement",
        metadata=meta(
            v.parse_kv_key,
            "KV key of the placement map: a JSON object tenant_id -> shard_id.",
            kind="KV key",
        ),
    )
    shard_directory: bool = field(
        default=True,
        metadata=meta(
            v.parse_bool,
            "Register in the shard directory and place tenants absent from the map over its "
            "live shards. Off: no entry, ring over the map's shards.",
            kind="bool",
        ),
    )
    shard_directory_bucket: str = field(
        default="AGGREGATE_SHARDS",
        metadata=meta(
            v.name_parser("KV bucket"),
            "NATS KV bucket of the shard directory (key: shard id).",
            kind="name",
        ),
    )
    shard_ttl_ms: int = field(
        default=10_000,
        metadata=ms("A directory entry not refreshed for this long expires (bucket max_age)."),
    )
    shard_heartbeat_ms: int = field(
        default=2000, metadata=ms("Period of this node's directory entry refresh (< shard_ttl_ms).")
    )
    shard_refresh_ms: int = field(
        default=1000, metadata=ms("Period of the re-read of the directory's live shards.")
    )
    advertise_grpc_addr: str | None = field(
        default=None,
        metadata=meta(
            v.optional(v.parse_host_port),
            "gRPC host:port clients dial, as written in the directory. Unset: the bound address, "
            "with a wildcard host replaced by this machine's host name.",
            kind="host:port",
        ),
    )
    advertise_http_addr: str | None = field(
        default=None,
        metadata=meta(
            v.optional(v.parse_host_port),
            "Admin HTTP host:port other nodes dial (tenant moves). Unset: as advertise_grpc_addr.",
            kind="host:port",
        ),
    )
    move_timeout_ms: int = field(
        default=30_000,
        metadata=ms("Default deadline of a tenant move (drain, map write, new owner ready)."),
    )


@dataclass(frozen=True, slots=True, repr=False)
class ProgramSettings(TenancySettings):
    """Programs: the decide and apply programs of the aggregate types, and their limits."""

    manifest_path: Path | None = field(
        default=None, metadata=opt_path("Aggregate-type manifest file (YAML/TOML/JSON).")
    )
    aggregate_type: str | None = field(
        default=None,
        metadata=meta(
            v.optional(v.parse_aggregate_type),
            "The one type served by decide_program[_path] / apply_program[_path]; unset: "
            "they serve every type a request names.",
            kind="type name",
        ),
    )
    decide_program: str | None = field(
        default=None,
        metadata=meta(
            v.optional(v.parse_str),
            "Inline decide program: Starlark source, or `module:function` for python.",
            kind="string",
        ),
    )
    decide_program_path: Path | None = field(
        default=None, metadata=opt_path("File holding the Starlark decide program.")
    )
    apply_program: str | None = field(
        default=None,
        metadata=meta(
            v.optional(v.parse_str),
            "Inline apply program: Starlark source, or `module:function` for python.",
            kind="string",
        ),
    )
    apply_program_path: Path | None = field(
        default=None, metadata=opt_path("File holding the Starlark apply program.")
    )
    program_language: Language = field(
        default=Language.STARLARK,
        metadata=meta(
            v.enum_parser(Language),
            "Language of the decide_program/apply_program settings: starlark or python.",
            kind="enum",
        ),
    )
    program_isolation: Isolation = field(
        default=Isolation.PROCESS,
        metadata=meta(
            v.enum_parser(Isolation),
            "Isolation of the decide_program/apply_program settings: process (worker pool with "
            "limits) or inline (trusted, fastest). Python programs are always inline.",
            kind="enum",
        ),
    )
    program_timeout_ms: int = field(
        default=1000, metadata=ms("Soft per-call deadline of a Starlark program.")
    )
    program_hard_timeout_ms: int = field(
        default=5000,
        metadata=ms("Process isolation: a worker still busy after this is killed and respawned."),
    )
    program_max_memory_mb: int = field(
        default=1024,
        metadata=meta(
            v.int_parser(64),
            "Process isolation: address-space limit of each worker process, MiB.",
            kind="int (MiB)",
        ),
    )
    program_workers: int = field(
        default=2,
        metadata=meta(
            v.int_parser(1), "Process isolation: worker processes in the pool.", kind="int"
        ),
    )
    program_batch_calls: int = field(
        default=16,
        metadata=meta(
            v.int_parser(1),
            "Process isolation: most queued calls sent to a worker in one frame (1: no batching).",
            kind="int",
        ),
    )


@dataclass(frozen=True, slots=True, repr=False)
class EventStoreSettings(ProgramSettings):
    """Event store: the JetStream stream of events and the NATS deadlines."""

    stream_name: str = field(
        default="AGGREGATE_EVENTS",
        metadata=meta(
            v.name_parser("stream name"),
            "JetStream stream of events.",
            kind="name",
        ),
    )
    stream_replicas: int = field(
        default=1,
        metadata=meta(v.int_parser(1, 5), "Stream replicas when it is created (1-5).", kind="int"),
    )
    duplicate_window_ms: int = field(
        default=120_000, metadata=ms("JetStream duplicate window (Nats-Msg-Id dedup).")
    )
    nats_timeout_ms: int = field(
        default=5000, metadata=ms("Deadline of every NATS request (publish, get, KV).")
    )
    nats_connect_timeout_ms: int = field(
        default=10_000,
        metadata=ms(
            "Deadline of the first NATS connection at start-up (retried until then; then exit "
            "code 3) and of the stream check after it. Later reconnects have no limit."
        ),
    )


@dataclass(frozen=True, slots=True, repr=False)
class CommandPathSettings(EventStoreSettings):
    """Command path: idempotency, the cache, conflict retries and the bounds of a command."""

    command_history: int = field(
        default=1000,
        metadata=meta(
            v.int_parser(1),
            "Command ids remembered per aggregate for idempotency (K).",
            kind="int",
        ),
    )
    cache_size: int = field(
        default=10_000,
        metadata=meta(v.int_parser(1), "Aggregates kept in the in-memory cache.", kind="int"),
    )
    retry_backoff_ms: int = field(
        default=10, metadata=ms("Base backoff between conflict retries (with jitter).", 0)
    )
    retry_backoff_max_ms: int = field(
        default=500, metadata=ms("Upper bound of the conflict-retry backoff.", 0)
    )
    max_payload_bytes: int = field(
        default=1_048_576,
        metadata=meta(v.int_parser(1), "Largest accepted command payload, bytes.", kind="int"),
    )
    max_json_depth: int = field(
        default=DEFAULT_MAX_DEPTH,
        metadata=meta(
            v.int_parser(1, MAX_DEPTH_LIMIT),
            "Deepest nesting of arrays and objects in a payload; deeper: INVALID_ARGUMENT.",
            kind="int",
        ),
    )
    max_json_int_digits: int = field(
        default=DEFAULT_MAX_INT_DIGITS,
        metadata=meta(
            v.int_parser(1, MAX_INT_DIGITS_LIMIT),
            "Most digits of one integer in a payload; more: INVALID_ARGUMENT.",
            kind="int",
        ),
    )
    max_metadata_entries: int = field(
        default=64,
        metadata=meta(v.int_parser(0), "Most entries of a command's metadata map.", kind="int"),
    )
    max_metadata_key_bytes: int = field(
        default=128,
        metadata=meta(v.int_parser(1), "Longest metadata key, UTF-8 bytes.", kind="int"),
    )
    max_metadata_value_bytes: int = field(
        default=1024,
        metadata=meta(v.int_parser(0), "Longest metadata value, UTF-8 bytes.", kind="int"),
    )
    max_metadata_bytes: int = field(
        default=16_384,
        metadata=meta(
            v.int_parser(0), "Most bytes of all metadata keys and values together.", kind="int"
        ),
    )
    max_in_flight: int = field(
        default=1024,
        metadata=meta(
            v.int_parser(1),
            "Commands processed at once; more: RESOURCE_EXHAUSTED.",
            kind="int",
        ),
    )


@dataclass(frozen=True, slots=True, repr=False)
class GrpcSettings(CommandPathSettings):
    """gRPC transport: the limits of a request message and of an HTTP/2 connection."""

    max_message_bytes: int = field(
        default=4_194_304,
        metadata=meta(
            v.int_parser(1024, 2**32 - 1),
            "Largest gRPC request message, bytes; refused from its length prefix, before it "
            "is read: RESOURCE_EXHAUSTED. At least max_payload_bytes.",
            kind="int",
        ),
    )
    grpc_max_header_list_bytes: int = field(
        default=16_384,
        metadata=meta(
            v.int_parser(1024, 1_048_576),
            "Largest request header list of a gRPC call, bytes (HTTP/2 accounting); larger: "
            "RESOURCE_EXHAUSTED for that call.",
            kind="int",
        ),
    )
    grpc_max_concurrent_streams: int = field(
        default=100,
        metadata=meta(
            v.int_parser(1, 2**31 - 1),
            "Calls open at once on one HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS); "
            "each may have 64 KiB sent and unread, so a connection buffers at most this "
            "many times 64 KiB.",
            kind="int",
        ),
    )


@dataclass(frozen=True, slots=True, repr=False)
class LifecycleSettings(GrpcSettings):
    """Lifecycle: the deadlines of shutdown (in-flight commands, the snapshot flush) and of
    a tenant drain."""

    shutdown_timeout_ms: int = field(
        default=30_000, metadata=ms("Grace for in-flight commands on shutdown.")
    )
    drain_timeout_ms: int = field(
        default=10_000, metadata=ms("Default wait for a tenant drain's in-flight commands.")
    )
    snapshot_flush_timeout_ms: int = field(
        default=5000, metadata=ms("Deadline of the snapshot flush on shutdown.")
    )
