"""What the admin API asks of the service, and the admin requests' validated shapes (§9.2).

The admin HTTP adapter talks to the running service only through ``AdminBackend``; the
service implements it by calling into the asyncio island (the tenant gate and the NATS
connection live there). The request parsers are pure: they turn a request body into a typed
request or raise ``InvalidArgumentError`` with a message an operator can act on.
"""

from __future__ import annotations

import json
import reprlib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypedDict

from aggregate.domain.errors import InvalidArgumentError
from aggregate.domain.ids import validate_tenant_id
from aggregate.domain.placement import validate_placement

if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_DRAIN_TIMEOUT_MS = 3_600_000
"""Longest wait an admin drain may ask for (one hour); longer asks are refused."""

_quoting = reprlib.Repr()
_quoting.maxstring = _quoting.maxother = _quoting.maxlong = 40
_quoting.maxlevel = 2
_quoting.maxlist = _quoting.maxdict = 4
_quote = _quoting.repr
"""A short quote of a client's value for error messages (long strings, numbers, lists and
nesting cut with ``...``), never the whole value."""


class HealthReport(TypedDict):
    """``GET /health``: liveness plus what an operator checks first."""

    status: str
    """``ok``, ``starting``, ``degraded`` (NATS down), ``draining`` or ``stopping``."""
    ready: bool
    nats_connected: bool
    uptime_seconds: float
    version: str
    shard_id: str


class TenantStatusView(TypedDict):
    """``GET /admin/tenant/{id}/status``; ``owner`` is the shard that owns the tenant now,
    when known (set when this node does not host it)."""

    tenant_id: str
    hosted: bool
    accepting: bool
    draining: bool
    in_flight: int
    owner: str | None


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

    async def tenants(self) -> list[TenantStatusView]:
        """Every tenant the node hosts or still has state for, sorted by id."""
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


def parse_json_object(body: bytes, *, allow_empty: bool) -> dict[str, object]:
    """Decode a request body that must be a JSON object (``{}`` when empty and allowed).

    Raises:
        InvalidArgumentError: not UTF-8 JSON, nested deeper than the decoder's recursion
            limit, an integer past the int-to-text digit limit, or not an object.
    """
    if not body.strip():
        if allow_empty:
            return {}
        raise InvalidArgumentError("request body is empty: send a JSON object")
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgumentError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgumentError(
            "request body nests arrays or objects too deeply; admin requests nest 2 levels"
        ) from None
    except ValueError:  # the only other failure of json.loads: an over-long integer
        raise InvalidArgumentError(
            f"request body holds an integer of more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(
            f"request body must be a JSON object, got {type(value).__name__}"
        )
    return value


def _check_keys(body: Mapping[str, object], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        named = ", ".join(map(_quote, unknown[:3]))
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise InvalidArgumentError(
            f"unknown field(s) {named}{more}; allowed: {', '.join(allowed) or 'none'}"
        )


def _timeout_s(body: Mapping[str, object], default_s: float) -> float:
    raw = body.get("timeout_ms")
    if raw is None:
        return default_s
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise InvalidArgumentError(
            f"timeout_ms must be a non-negative integer of milliseconds, got {_quote(raw)}"
        )
    if raw > MAX_DRAIN_TIMEOUT_MS:
        raise InvalidArgumentError(
            f"timeout_ms must be at most {MAX_DRAIN_TIMEOUT_MS}, got {_quote(raw)}"
        )
    return raw / 1000


def _tenant(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{where} must be a string tenant id, got {_quote(value)}")
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
                f"got {_quote(raw)}"
            )
        tenants = [_tenant(item, f"hosted_tenants[{i}]") for i, item in enumerate(raw)]
        return ReloadRequest(sorted(set(tenants)), None)
    raw = fields["placement"]
    return ReloadRequest(None, dict(validate_placement(raw).assignments))
