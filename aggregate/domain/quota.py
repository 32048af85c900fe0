"""Per-tenant quotas as values: the limits, and the override map (DESIGN §13). Pure.

A tenant's quota is a commands-per-second rate with a burst (a token bucket) and a number of
commands in flight; 0 means "no limit". Defaults come from the settings; overrides per tenant
come from the config file (``quota_overrides``) and from a NATS KV key, both in the same
shape, a JSON object::

    {"tenant-a": {"commands_per_second": 50, "burst": 100, "max_in_flight": 10}}

Every field of an entry is optional (absent: the layer below decides). Values and sizes are
bounded here, where they enter; an invalid map is refused whole, naming what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Final

from aggregate.domain.errors import InvalidArgumentError, quote
from aggregate.domain.ids import validate_tenant_id

MAX_RATE: Final = 1_000_000
"""Largest commands-per-second, burst or in-flight value an override may give."""
MAX_OVERRIDES: Final = 10_000
"""Most tenants one override map may name."""
QUOTA_FIELDS: Final = ("commands_per_second", "burst", "max_in_flight")


@dataclass(frozen=True, slots=True)
class TenantQuota:
    """One tenant's limits. ``commands_per_second`` 0: no rate limit; ``burst`` 0: one
    second's worth (at least 1); ``max_in_flight`` 0: no in-flight limit."""

    commands_per_second: int = 0
    burst: int = 0
    max_in_flight: int = 0

    @property
    def bucket_size(self) -> int:
        """Tokens the bucket holds when full."""
        return self.burst or max(1, self.commands_per_second)

    @property
    def unlimited(self) -> bool:
        return self.commands_per_second == 0 and self.max_in_flight == 0

    def as_dict(self) -> dict[str, int]:
        return {
            "commands_per_second": self.commands_per_second,
            "burst": self.bucket_size if self.commands_per_second else 0,
            "max_in_flight": self.max_in_flight,
        }


@dataclass(frozen=True, slots=True)
class QuotaOverride:
    """An override entry: the fields it sets (None: not set here)."""

    commands_per_second: int | None = None
    burst: int | None = None
    max_in_flight: int | None = None

    def over(self, base: TenantQuota) -> TenantQuota:
        """``base`` with this entry's fields."""
        changes = {n: getattr(self, n) for n in QUOTA_FIELDS if getattr(self, n) is not None}
        return replace(base, **changes) if changes else base


QuotaOverrides = Mapping[str, QuotaOverride]
NO_OVERRIDES: QuotaOverrides = MappingProxyType({})


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{where} must be an integer, got {quote(value)}")
    if not 0 <= value <= MAX_RATE:
        raise InvalidArgumentError(f"{where} must be between 0 and {MAX_RATE}, got {value}")
    return value


def parse_quota_overrides(value: object) -> QuotaOverrides:
    """Validate an override map (decoded JSON or a config-file mapping).

    Raises:
        InvalidArgumentError: not an object of tenant id -> object of known integer fields
            within bounds, or more than ``MAX_OVERRIDES`` tenants.
    """
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(
            "quota overrides must be an object of tenant id -> "
            '{"commands_per_second", "burst", "max_in_flight"}'
        )
    if len(value) > MAX_OVERRIDES:
        raise InvalidArgumentError(
            f"quota overrides name {len(value)} tenants; at most {MAX_OVERRIDES} are allowed"
        )
    result: dict[str, QuotaOverride] = {}
    for tenant, entry in value.items():
        tenant_id = validate_tenant_id(tenant)
        if not isinstance(entry, Mapping):
            raise InvalidArgumentError(
                f"quota override of tenant {quote(tenant_id)} must be an object"
            )
        unknown = [k for k in entry if k not in QUOTA_FIELDS]
        if unknown:
            raise InvalidArgumentError(
                f"quota override of tenant {quote(tenant_id)}: unknown field "
                f"{quote(str(unknown[0]))}; known: {', '.join(QUOTA_FIELDS)}"
            )
        fields = {
            name: _count(entry[name], f"quota override {tenant_id}.{name}")
            for name in QUOTA_FIELDS
            if name in entry
        }
        result[tenant_id] = QuotaOverride(**fields)
    return MappingProxyType(result)
