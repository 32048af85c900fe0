"""What the admin API asks of the service, and the admin requests' validated shapes (§9.2).

The admin HTTP adapter talks to the running service only through ``AdminBackend``; the
service implements it by calling into the asyncio island (the tenant gate and the NATS
connection live there). The request parsers are pure: they turn a request body into a typed
request or raise ``InvalidArgumentError`` with a message an operator can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NotRequired, Protocol, TypedDict
from urllib.parse import parse_qsl

from aggregate.domain.errors import InvalidArgumentError, quote, quote_list
from aggregate.domain.ids import validate_tenant_id
from aggregate.domain.json_input import loads_json
from aggregate.domain.placement import validate_placement

if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_DRAIN_TIMEOUT_MS = 3_600_000
"""Longest wait an admin drain may ask for (one hour); longer asks are refused."""
MAX_BODY_DEPTH = 8
"""Deepest nesting of an admin request body (the deepest valid one nests 2 levels)."""
MAX_BODY_INT_DIGITS = 20
"""Most digits of an integer in an admin request body (a timeout in milliseconds)."""

LOG_LEVEL_NAMES = ("debug", "info", "warning", "error", "critical")

DEFAULT_TENANT_PAGE = 100
"""Tenants in one ``GET /admin/tenants`` answer when the request names no ``limit``."""
MAX_TENANT_PAGE = 1000
"""Most tenants one ``GET /admin/tenants`` answer may hold; a larger ``limit`` is refused."""
MAX_QUERY_FIELDS = 8
"""Most ``name=value`` pairs of an admin query string."""


class StorageReport(TypedDict):
    """``GET /health`` ``storage``: the snapshot database as the last check found it
    (flags None before the first check)."""

    reachable: bool | None
    writable: bool | None
    last_error: str | None
    last_error_at: str | None
    checked_at: str | None


class HealthReport(TypedDict):
    """``GET /health``: liveness plus what an operator checks first."""

    status: str
    """``ok``, ``starting``, ``degraded`` (NATS down or the snapshot database not
    writable), ``draining`` or ``stopping``."""
    ready: bool
    nats_connected: bool
    uptime_seconds: float
    version: str
    shard_id: str
    storage: StorageReport
    active_aggregates: int
    """Aggregates in the node's cache."""
    snapshot_lag: int
    """Snapshots waiting to be written."""
    snapshot_lag_seconds: float
    """How long the oldest of them has waited."""
    index: NotRequired[dict[str, Any]]
    """The query index: ``position``, ``lag_positions``, ``lag_seconds``, ``replayed``
    (the start-up replay is done), ``replaying_tenants``, ``replayed_messages``."""


class TenantStatusView(TypedDict):
    """``GET /admin/tenant/{id}/status``; ``owner`` is the shard that owns the tenant now,
    when known (set when this node does not host it)."""

    tenant_id: str
    hosted: bool
    accepting: bool
    draining: bool
    in_flight: int
    owner: str | None
    aggregates_cached: int
    """The tenant's aggregates in this node's cache."""
    aggregates_snapshotted: int | None
    """The tenant's aggregates with a snapshot in this node's database (None: the database
    could not be read)."""
    commands_total: int
    """Commands of the tenant this node admitted since it started, whatever their outcome."""
    last_activity: str | None
    """When the last of them ended, RFC 3339 UTC; None if none."""


@dataclass(frozen=True, slots=True)
class TenantPage:
    """A validated ``GET /admin/tenants`` page: tenants after ``after`` (None: from the
    first), at most ``limit`` of them, in tenant id order."""

    after: str | None = None
    limit: int = DEFAULT_TENANT_PAGE


@dataclass(frozen=True, slots=True)
class TenantListing:
    """One page of tenants; ``next_after`` is the ``after`` of the next page (None: this
    page is the last)."""

    tenants: list[TenantStatusView]
    next_after: str | None


class DrainReport(TypedDict):
    """How a tenant drain ended: ``drained`` (nothing in flight), or timed out with
    ``in_flight`` commands still running, or ``reopened`` (accepted again meanwhile)."""

    tenant_id: str
    drained: bool
    in_flight: int
    reopened: bool
    owner: str | None


class ReloadReport(TypedDict):
    """Tenants this node started (``arrived``) and stopped (``left``) hosting."""

    arrived: list[str]
    left: list[str]


class AdminBackend(Protocol):
    """The running service as the admin API sees it.

    ``health`` and ``ready`` are called on the admin server's Trio thread and must be cheap
    and thread-safe (read published flags, never wait on the island). The async methods may
    call into the island; cancelling one abandons the wait, never the state change it made
    (a drain stays in force).
    """

    def health(self) -> HealthReport: ...

    def ready(self) -> bool:
        """False while starting, draining the node, or disconnected from NATS."""
        ...

    async def tenants(self, page: TenantPage) -> TenantListing:
        """One page of the tenants the node hosts or still has state for, sorted by id."""
        ...

    async def tenant_status(self, tenant_id: str) -> TenantStatusView: ...

    async def drain_tenant(self, tenant_id: str, timeout_s: float) -> DrainReport:
        """Stop accepting the tenant's commands and wait up to ``timeout_s`` for its
        in-flight ones; a timeout is reported in the result, not raised."""
        ...

    async def reload(
        self, hosted_tenants: list[str] | None, placement: dict[str, str] | None
    ) -> ReloadReport:
        """Replace the hosted-tenant allowlist, or apply a placement map (tenant → shard).

        Raises:
            InvalidArgumentError: the service refuses the new placement.
        """
        ...


@dataclass(frozen=True, slots=True)
class DrainRequest:
    """A validated drain: which tenant, and how long to wait for its in-flight commands."""

    tenant_id: str
    timeout_s: float


@dataclass(frozen=True, slots=True)
class ReloadRequest:
    """A validated reload: a new allowlist, a placement map, or both None (clear the
    allowlist)."""

    hosted_tenants: list[str] | None
    placement: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class LogLevelRequest:
    """A validated log-level change: a lower-case level name for the service's loggers,
    the libraries' loggers, or both (None: unchanged)."""

    level: str | None
    library_level: str | None


def parse_tenant_page(query: bytes) -> TenantPage:
    """Validate the query string of ``GET /admin/tenants``: ``limit`` (1 to
    ``MAX_TENANT_PAGE``, default ``DEFAULT_TENANT_PAGE``) and ``after`` (a tenant id), each
    at most once.

    Raises:
        InvalidArgumentError: not ``name=value`` pairs, more than ``MAX_QUERY_FIELDS`` of
            them, an unknown or repeated name, a bad limit or tenant id.
    """
    try:
        pairs = parse_qsl(
            query.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=True,
            max_num_fields=MAX_QUERY_FIELDS,
            errors="strict",
        )
    except ValueError:
        raise InvalidArgumentError(
            f"the query string must be at most {MAX_QUERY_FIELDS} name=value pairs "
            "joined by '&', percent-encoded UTF-8, e.g. ?limit=100&after=acme"
        ) from None
    names = [name for name, _ in pairs]
    _check_keys(dict.fromkeys(names), ("limit", "after"))
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidArgumentError(f"give {quote_list(repeated)} at most once")
    fields = dict(pairs)
    limit = DEFAULT_TENANT_PAGE
    if "limit" in fields:
        raw = fields["limit"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 6:
            raise InvalidArgumentError(
                f"limit must be a whole number from 1 to {MAX_TENANT_PAGE}, got {quote(raw)}"
            )
        limit = int(raw)
        if not 1 <= limit <= MAX_TENANT_PAGE:
            raise InvalidArgumentError(
                f"limit must be a whole number from 1 to {MAX_TENANT_PAGE}, got {quote(raw)}"
            )
    after = _tenant(fields["after"], "after") if "after" in fields else None
    return TenantPage(after, limit)


def parse_json_object(body: bytes, *, allow_empty: bool) -> dict[str, object]:
    """Decode a request body that must be a JSON object (``{}`` when empty and allowed).

    Raises:
        InvalidArgumentError: not UTF-8 JSON, nested deeper than ``MAX_BODY_DEPTH``, an
            integer longer than ``MAX_BODY_INT_DIGITS``, or not an object.
    """
    if not body.strip():
        if allow_empty:
            return {}
        raise InvalidArgumentError("request body is empty: send a JSON object")
    value = loads_json(
        body, what="request body", max_depth=MAX_BODY_DEPTH, max_int_digits=MAX_BODY_INT_DIGITS
    )
    if not isinstance(value, dict):
        raise InvalidArgumentError(
            f"request body must be a JSON object, got {type(value).__name__}"
        )
    return value


def _check_keys(body: Mapping[str, object], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidArgumentError(
            f"unknown field(s) {quote_list(unknown)}; allowed: {', '.join(allowed) or 'none'}"
        )


def _timeout_s(body: Mapping[str, object], default_s: float) -> float:
    raw = body.get("timeout_ms")
    if raw is None:
        return default_s
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise InvalidArgumentError(
            f"timeout_ms must be a non-negative integer of milliseconds, got {quote(raw)}"
        )
    if raw > MAX_DRAIN_TIMEOUT_MS:
        raise InvalidArgumentError(
            f"timeout_ms must be at most {MAX_DRAIN_TIMEOUT_MS}, got {quote(raw)}"
        )
    return raw / 1000


def _tenant(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{where} must be a string tenant id, got {quote(value)}")
    try:
        return validate_tenant_id(value)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{where}: {exc.message}") from None


def parse_drain(body: bytes, *, tenant_id: str | None, default_timeout_s: float) -> DrainRequest:
    """Validate a drain request.

    ``tenant_id`` comes from the path (``/admin/tenant/{id}/drain``: the body may only hold
    ``timeout_ms``, and may be empty); when None the body must name it (``/admin/drain``).

    Raises:
        InvalidArgumentError: malformed body, bad tenant id, or a negative or huge timeout.
    """
    if tenant_id is not None:
        fields = parse_json_object(body, allow_empty=True)
        _check_keys(fields, ("timeout_ms",))
        return DrainRequest(
            _tenant(tenant_id, "tenant id in the path"), _timeout_s(fields, default_timeout_s)
        )
    fields = parse_json_object(body, allow_empty=False)
    _check_keys(fields, ("tenant_id", "timeout_ms"))
    if "tenant_id" not in fields:
        raise InvalidArgumentError('missing field "tenant_id": say which tenant to drain')
    return DrainRequest(
        _tenant(fields["tenant_id"], "tenant_id"), _timeout_s(fields, default_timeout_s)
    )


def parse_reload(body: bytes) -> ReloadRequest:
    """Validate ``{"hosted_tenants": [...]}``, ``{"hosted_tenants": null}`` (clear the
    allowlist: every tenant the placement gives this node is allowed) or
    ``{"placement": {tenant: shard}}``.

    Raises:
        InvalidArgumentError: neither or both fields, wrong shapes, bad tenant or shard ids.
    """
    fields = parse_json_object(body, allow_empty=False)
    _check_keys(fields, ("hosted_tenants", "placement"))
    if ("hosted_tenants" in fields) == ("placement" in fields):
        raise InvalidArgumentError(
            'send exactly one of "hosted_tenants" (a list of tenant ids) or '
            '"placement" (an object mapping tenant id to shard id)'
        )
    if "hosted_tenants" in fields:
        raw = fields["hosted_tenants"]
        if raw is None:
            return ReloadRequest(None, None)
        if not isinstance(raw, list):
            raise InvalidArgumentError(
                "hosted_tenants must be a list of tenant ids (or null to allow all), "
                f"got {quote(raw)}"
            )
        tenants = [_tenant(item, f"hosted_tenants[{i}]") for i, item in enumerate(raw)]
        return ReloadRequest(sorted(set(tenants)), None)
    raw = fields["placement"]
    return ReloadRequest(None, dict(validate_placement(raw).assignments))


def parse_log_levels(body: bytes) -> LogLevelRequest:
    """Validate ``{"level": "debug"}``, ``{"library_level": "info"}`` or both.

    Raises:
        InvalidArgumentError: neither field, an unknown field, or a value that is not one of
            debug, info, warning (or warn), error, critical.
    """
    fields = parse_json_object(body, allow_empty=False)
    _check_keys(fields, ("level", "library_level"))
    if not fields:
        raise InvalidArgumentError(
            'give "level" (the service\'s loggers), "library_level" (every other logger) '
            'or both, e.g. {"level": "debug"}'
        )
    wanted = {name: _level_name(fields[name], name) for name in fields}
    return LogLevelRequest(wanted.get("level"), wanted.get("library_level"))


def _level_name(value: object, where: str) -> str:
    text = value.strip().lower() if isinstance(value, str) else None
    text = "warning" if text == "warn" else text
    if text not in LOG_LEVEL_NAMES:
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise InvalidArgumentError(
            f"{where} must be one of {', '.join(LOG_LEVEL_NAMES)}, got {shown}"
        )
    return text
