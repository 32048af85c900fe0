"""``Settings``: every configuration value of the service, in one frozen dataclass.

Each field's metadata carries its parser (``aggregate.config.values``), a one-line meaning
(rendered into docs/configuration.md) and where it may be set. ``aggregate.config.loader``
builds a validated ``Settings`` from defaults ← config file ← ``AGGREGATE_*`` environment;
constructing ``Settings(...)`` directly (tests) skips that validation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aggregate.config import values as v
from aggregate.domain.ids import DEFAULT_TENANT
from aggregate.domain.json_input import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_INT_DIGITS,
    MAX_DEPTH_LIMIT,
    MAX_INT_DIGITS_LIMIT,
)
from aggregate.domain.manifest import Isolation, Language, Manifest

if TYPE_CHECKING:
    from collections.abc import Mapping

ENV_PREFIX = "AGGREGATE_"

Scope = Literal["any", "env", "file", "internal"]
"""Where a field may be set: anywhere, only in the environment, only in the config file, or
nowhere (computed by the loader)."""


def _meta(
    parse: v.Parser,
    doc: str,
    *,
    kind: str,
    scope: Scope = "any",
    secret: bool = False,
    env: str | None = None,
) -> dict[str, Any]:
    """``env``: the environment variable when it is not ``AGGREGATE_`` + the upper-case
    field name (the OpenTelemetry variables keep their standard names)."""
    meta = {"parse": parse, "doc": doc, "kind": kind, "scope": scope, "secret": secret}
    if env is not None:
        meta["env"] = env
    return meta


def _ms(doc: str, minimum: int = 1) -> dict[str, Any]:
    return _meta(v.int_parser(minimum), doc, kind="int (ms)")


def _opt_path(doc: str, *, scope: Scope = "any") -> dict[str, Any]:
    return _meta(v.optional(v.parse_path), doc, kind="path", scope=scope)


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """The service's configuration. Build it with ``aggregate.config.load_settings``.

    Field ``x`` is environment variable ``AGGREGATE_X`` and config-file key ``x``.
    Durations are integer milliseconds (``*_ms``); ``*_seconds`` properties give floats.
    """

    # --- core ---
    config_path: Path | None = field(
        default=None,
        metadata=_opt_path(
            "YAML/TOML/JSON config file, by extension (environment only).", scope="env"
        ),
    )
    nats_url: str = field(
        default=v.EMBEDDED,
        metadata=_meta(
            v.parse_nats_url,
            "`embedded` (or empty): start the bundled nats-server under storage_path, loopback "
            "only. Otherwise comma-separated `nats://`, `tls://`, `ws://` or `wss://` URLs.",
            kind="url list",
        ),
    )
    storage_path: Path = field(
        default=Path("./data"),
        metadata=_meta(
            v.parse_path,
            "Directory of the snapshot database (and the embedded nats-server's store).",
            kind="path",
        ),
    )
    snapshot_threshold: int = field(
        default=10,
        metadata=_meta(
            v.int_parser(1),
            "Snapshot an aggregate when this many events follow its last one.",
            kind="int",
        ),
    )
    max_retries: int = field(
        default=3,
        metadata=_meta(
            v.int_parser(0),
            "Retries of a command after a version conflict, then ABORTED.",
            kind="int",
        ),
    )
    http_addr: str = field(
        default="0.0.0.0:8080",
        metadata=_meta(v.parse_host_port, "Admin HTTP bind address, host:port.", kind="host:port"),
    )
    grpc_addr: str = field(
        default="0.0.0.0:50051",
        metadata=_meta(v.parse_host_port, "gRPC bind address, host:port.", kind="host:port"),
    )
    admin_token: str | None = field(
        default=None,
        metadata=_meta(
            v.optional(v.parse_str),
            "Bearer token for /admin/*; unset: /admin/* answers loopback clients only. Secret.",
            kind="string",
            secret=True,
        ),
    )
    log_level: str = field(
        default="info",
        metadata=_meta(
            v.parse_log_level,
            "debug, info, warning, error or critical.",
            kind="string",
        ),
    )
    logger_socket: Path | None = field(
        default=None,
        metadata=_opt_path(
            "Unix socket that also receives the JSON log lines (edge-logger-client)."
        ),
    )
    library_log_level: str = field(
        default="warning",
        metadata=_meta(
            v.parse_log_level,
            "Level of the libraries' loggers (grpclib, h2, hpack, nats, hypercorn, asyncio, "
            "...); log_level is the service's own.",
            kind="string",
        ),
    )
    access_log: v.AccessLogMode = field(
        default=v.AccessLogMode.OFF,
        metadata=_meta(
            v.enum_parser(v.AccessLogMode),
            "One info line per gRPC call (logger aggregate.access): off, on, or sampled "
            "(every call not OK, one in access_log_sample_every of the OK ones).",
            kind="enum",
        ),
    )
    access_log_sample_every: int = field(
        default=100,
        metadata=_meta(
            v.int_parser(1),
            "access_log=sampled: log one in this many calls that end OK.",
            kind="int",
        ),
    )
    # --- admin HTTP ---
    http_max_body_bytes: int = field(
        default=65_536,
        metadata=_meta(
            v.int_parser(1024, 16 * 1024 * 1024),
            "Largest admin request body, bytes (1 KiB-16 MiB); larger: 413.",
            kind="int",
        ),
    )
    http_max_header_bytes: int = field(
        default=16_384,
        metadata=_meta(
            v.int_parser(1024, 1024 * 1024),
            "Largest admin request head (target and headers), bytes (1 KiB-1 MiB); larger: 431.",
            kind="int",
        ),
    )
    http_max_headers: int = field(
        default=100,
        metadata=_meta(
            v.int_parser(8, 10_000),
            "Most header fields in one admin request (8-10000); more: 431.",
            kind="int",
        ),
    )
    http_body_timeout_ms: int = field(
        default=10_000, metadata=_ms("Deadline for an admin request body to arrive; slower: 408.")
    )
    # --- tenancy and placement ---
    multi_tenant: bool = field(
        default=True,
        metadata=_meta(
            v.parse_bool,
            "Tenant ids come from x-tenant-id. Off: one tenant, default_tenant_id.",
            kind="bool",
        ),
    )
    default_tenant_id: str | None = field(
        default=None,
        metadata=_meta(
            v.optional(v.parse_tenant_id),
            "Tenant of requests without x-tenant-id. Unset: INVALID_ARGUMENT when multi-tenant, "
            "`_default` when not.",
            kind="tenant id",
        ),
    )
    shard_id: str = field(
        default="local",
        metadata=_meta(
            v.name_parser("shard id"),
            "This node's shard in the placement map.",
            kind="name",
        ),
    )
    placement_bucket: str = field(
        default="AGGREGATE_PLACEMENT",
        metadata=_meta(
            v.name_parser("KV bucket"),
            "NATS KV bucket holding the placement map.",
            kind="name",
        ),
    )
    placement_key: str = field(
        default="aggregate_placement",
        metadata=_meta(
            v.parse_kv_key,
            "KV key of the placement map: a JSON object tenant_id -> shard_id.",
            kind="KV key",
        ),
    )
    # --- programs ---
    manifest_path: Path | None = field(
        default=None, metadata=_opt_path("Aggregate-type manifest file (YAML/TOML/JSON).")
    )
    aggregate_type: str = field(
        default="default",
        metadata=_meta(
            v.parse_aggregate_type,
            "Type name served by the programs of decide_program[_path] / apply_program[_path].",
            kind="type name",
        ),
    )
    decide_program: str | None = field(
        default=None,
        metadata=_meta(
            v.optional(v.parse_str),
            "Inline decide program: Starlark source, or `module:function` for python.",
            kind="string",
        ),
    )
    decide_program_path: Path | None = field(
        default=None, metadata=_opt_path("File holding the Starlark decide program.")
    )
    apply_program: str | None = field(
        default=None,
        metadata=_meta(
            v.optional(v.parse_str),
            "Inline apply program: Starlark source, or `module:function` for python.",
            kind="string",
        ),
    )
    apply_program_path: Path | None = field(
        default=None, metadata=_opt_path("File holding the Starlark apply program.")
    )
    program_language: Language = field(
        default=Language.STARLARK,
        metadata=_meta(
            v.enum_parser(Language),
            "Language of the decide_program/apply_program settings: starlark or python.",
            kind="enum",
        ),
    )
    program_isolation: Isolation = field(
        default=Isolation.PROCESS,
        metadata=_meta(
            v.enum_parser(Isolation),
            "Isolation of the decide_program/apply_program settings: process (worker pool with "
            "limits) or inline (trusted, fastest). Python programs are always inline.",
            kind="enum",
        ),
    )
    program_timeout_ms: int = field(
        default=1000, metadata=_ms("Soft per-call deadline of a Starlark program.")
    )
    program_hard_timeout_ms: int = field(
        default=5000,
        metadata=_ms("Process isolation: a worker still busy after this is killed and respawned."),
    )
    program_max_memory_mb: int = field(
        default=1024,
        metadata=_meta(
            v.int_parser(64),
            "Process isolation: address-space limit of each worker process, MiB.",
            kind="int (MiB)",
        ),
    )
    program_workers: int = field(
        default=2,
        metadata=_meta(
            v.int_parser(1), "Process isolation: worker processes in the pool.", kind="int"
        ),
    )
    # --- event store ---
    stream_name: str = field(
        default="AGGREGATE_EVENTS",
        metadata=_meta(
            v.name_parser("stream name"),
            "JetStream stream of events.",
            kind="name",
        ),
    )
    stream_replicas: int = field(
        default=1,
        metadata=_meta(v.int_parser(1, 5), "Stream replicas when it is created (1-5).", kind="int"),
    )
    duplicate_window_ms: int = field(
        default=120_000, metadata=_ms("JetStream duplicate window (Nats-Msg-Id dedup).")
    )
    nats_timeout_ms: int = field(
        default=5000, metadata=_ms("Deadline of every NATS request (publish, get, KV).")
    )
    nats_connect_timeout_ms: int = field(
        default=10_000,
        metadata=_ms(
            "Deadline of the first NATS connection at start-up (retried until then; then exit "
            "code 3) and of the stream check after it. Later reconnects have no limit."
        ),
    )
    # --- command path ---
    command_history: int = field(
        default=1000,
        metadata=_meta(
            v.int_parser(1),
            "Command ids remembered per aggregate for idempotency (K).",
            kind="int",
        ),
    )
    cache_size: int = field(
        default=10_000,
        metadata=_meta(v.int_parser(1), "Aggregates kept in the in-memory cache.", kind="int"),
    )
    retry_backoff_ms: int = field(
        default=10, metadata=_ms("Base backoff between conflict retries (with jitter).", 0)
    )
    retry_backoff_max_ms: int = field(
        default=500, metadata=_ms("Upper bound of the conflict-retry backoff.", 0)
    )
    max_payload_bytes: int = field(
        default=1_048_576,
        metadata=_meta(v.int_parser(1), "Largest accepted command payload, bytes.", kind="int"),
    )
    max_json_depth: int = field(
        default=DEFAULT_MAX_DEPTH,
        metadata=_meta(
            v.int_parser(1, MAX_DEPTH_LIMIT),
            "Deepest nesting of arrays and objects in a payload; deeper: INVALID_ARGUMENT.",
            kind="int",
        ),
    )
    max_json_int_digits: int = field(
        default=DEFAULT_MAX_INT_DIGITS,
        metadata=_meta(
            v.int_parser(1, MAX_INT_DIGITS_LIMIT),
            "Most digits of one integer in a payload; more: INVALID_ARGUMENT.",
            kind="int",
        ),
    )
    max_metadata_entries: int = field(
        default=64,
        metadata=_meta(v.int_parser(0), "Most entries of a command's metadata map.", kind="int"),
    )
    max_metadata_key_bytes: int = field(
        default=128,
        metadata=_meta(v.int_parser(1), "Longest metadata key, UTF-8 bytes.", kind="int"),
    )
    max_metadata_value_bytes: int = field(
        default=1024,
        metadata=_meta(v.int_parser(0), "Longest metadata value, UTF-8 bytes.", kind="int"),
    )
    max_metadata_bytes: int = field(
        default=16_384,
        metadata=_meta(
            v.int_parser(0), "Most bytes of all metadata keys and values together.", kind="int"
        ),
    )
    max_in_flight: int = field(
        default=1024,
        metadata=_meta(
            v.int_parser(1),
            "Commands processed at once; more: RESOURCE_EXHAUSTED.",
            kind="int",
        ),
    )
    # --- gRPC transport ---
    max_message_bytes: int = field(
        default=4_194_304,
        metadata=_meta(
            v.int_parser(1024, 2**32 - 1),
            "Largest gRPC request message, bytes; refused from its length prefix, before it "
            "is read: RESOURCE_EXHAUSTED. At least max_payload_bytes.",
            kind="int",
        ),
    )
    grpc_max_header_list_bytes: int = field(
        default=16_384,
        metadata=_meta(
            v.int_parser(1024, 1_048_576),
            "Largest request header list of a gRPC call, bytes (HTTP/2 accounting); larger: "
            "RESOURCE_EXHAUSTED for that call.",
            kind="int",
        ),
    )
    grpc_max_concurrent_streams: int = field(
        default=100,
        metadata=_meta(
            v.int_parser(1, 2**31 - 1),
            "Calls open at once on one HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS).",
            kind="int",
        ),
    )
    # --- lifecycle ---
    shutdown_timeout_ms: int = field(
        default=30_000, metadata=_ms("Grace for in-flight commands on shutdown.")
    )
    drain_timeout_ms: int = field(
        default=10_000, metadata=_ms("Default wait for a tenant drain's in-flight commands.")
    )
    snapshot_flush_timeout_ms: int = field(
        default=5000, metadata=_ms("Deadline of the snapshot flush on shutdown.")
    )
    # --- metrics ---
    metrics_tenant_labels: bool = field(
        default=True,
        metadata=_meta(
            v.parse_bool, "Label metrics by tenant_id (off: bounded cardinality).", kind="bool"
        ),
    )
    # --- tracing (OpenTelemetry's standard variables, plus one of the service's) ---
    otel_exporter_otlp_endpoint: str | None = field(
        default=None,
        metadata=_meta(
            v.optional(v.parse_http_url),
            "OTLP/HTTP collector base URL; traces go to <url>/v1/traces. Unset (and no "
            "traces endpoint): no tracing at all.",
            kind="url",
            env="OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    )
    otel_exporter_otlp_traces_endpoint: str | None = field(
        default=None,
        metadata=_meta(
            v.optional(v.parse_http_url),
            "Full OTLP/HTTP URL for traces, used as given; wins over the base URL.",
            kind="url",
            env="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
    )
    otel_exporter_otlp_protocol: str = field(
        default="http/protobuf",
        metadata=_meta(
            v.parse_otlp_protocol,
            "OTLP transport; only http/protobuf is supported.",
            kind="string",
            env="OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    )
    otel_service_name: str = field(
        default="aggregate",
        metadata=_meta(
            v.parse_str,
            "service.name of the exported spans.",
            kind="string",
            env="OTEL_SERVICE_NAME",
        ),
    )
    trace_export_timeout_ms: int = field(
        default=10_000,
        metadata=_ms("Deadline of one span export request, and of the final export on shutdown."),
    )
    # --- not variables ---
    aggregate_types: Manifest | None = field(
        default=None,
        metadata=_meta(
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
    def http_body_timeout_seconds(self) -> float:
        """``http_body_timeout_ms`` in seconds."""
        return self.http_body_timeout_ms / 1000

    @property
    def shutdown_timeout_seconds(self) -> float:
        """``shutdown_timeout_ms`` in seconds."""
        return self.shutdown_timeout_ms / 1000

    @property
    def drain_timeout_seconds(self) -> float:
        """``drain_timeout_ms`` in seconds."""
        return self.drain_timeout_ms / 1000

    @property
    def snapshot_flush_timeout_seconds(self) -> float:
        """``snapshot_flush_timeout_ms`` in seconds."""
        return self.snapshot_flush_timeout_ms / 1000


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
