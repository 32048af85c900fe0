"""Tenant placement: which shard hosts which tenant (DESIGN §6). Pure: no I/O, no async.

A placement map is a JSON object ``tenant_id -> shard_id`` kept in NATS KV (or applied by
hand through ``POST /admin/reload``). Tenants named in the map live on their shard; tenants
absent from a non-empty map are placed by a consistent hash ring over the shard ids that
appear in the map, so every node computes the same owner without coordination and adding
a shard moves only about ``1/N`` of the unmapped tenants. With no map (or an empty one,
which names no shard to place anyone on) every node hosts every tenant.

The ring hashes with BLAKE2b, never Python's ``hash()``, which is salted per process.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from aggregate.domain.errors import InvalidArgumentError, quote
from aggregate.domain.ids import TOKEN_PATTERN

VNODES_PER_SHARD = 256
"""Virtual nodes per shard: 10k tenants over 3 shards land within ~±15% of a third."""


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def validate_shard_id(value: object) -> str:
    """Return ``value`` if it is a valid shard id (same rules as tenant ids).

    Raises:
        InvalidArgumentError: it is not a string matching ``[A-Za-z0-9_-]{1,64}``.
    """
    if not isinstance(value, str) or not TOKEN_PATTERN.fullmatch(value):
        raise InvalidArgumentError(
            f"shard id {quote(value)} is invalid: use 1-64 characters of A-Z a-z 0-9 _ -"
        )
    return value


class HashRing:
    """A consistent hash ring with ``vnodes`` virtual nodes per shard.

    The owner of a key is the shard of the first point clockwise from the key's hash.
    Identical shard sets give identical rings in every process.
    """

    __slots__ = ("_owners", "_points", "shards")

    def __init__(self, shards: Iterable[str], vnodes: int = VNODES_PER_SHARD) -> None:
        self.shards: frozenset[str] = frozenset(shards)
        points = sorted(
            (_hash64(f"{shard}\x00{i}"), shard) for shard in self.shards for i in range(vnodes)
        )
        self._points = [point for point, _ in points]
        self._owners = [shard for _, shard in points]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HashRing):
            return NotImplemented
        return self.shards == other.shards and len(self._points) == len(other._points)

    def __hash__(self) -> int:
        return hash(self.shards)

    def owner(self, key: str) -> str | None:
        """The shard owning ``key``, or None when the ring has no shard."""
        if not self._points:
            return None
        index = bisect.bisect_right(self._points, _hash64(key))
        return self._owners[index if index < len(self._owners) else 0]


@dataclass(frozen=True, slots=True, eq=False)
class PlacementMap:
    """A validated placement map and the hash ring over the shard ids it names.

    Build it with ``validate_placement`` or ``parse_placement``. Two maps are equal when
    they assign the same tenants to the same shards.
    """

    assignments: Mapping[str, str]
    ring: HashRing = field(repr=False)

    @classmethod
    def of(cls, assignments: Mapping[str, str]) -> PlacementMap:
        """A map over already-validated entries (copied, read-only)."""
        frozen = MappingProxyType(dict(assignments))
        return cls(frozen, HashRing(frozen.values()))

    @property
    def shards(self) -> frozenset[str]:
        return self.ring.shards

    def owner_of(self, tenant_id: str) -> str | None:
        """The mapped shard of ``tenant_id``, else its place on the ring (None: no shards)."""
        mapped = self.assignments.get(tenant_id)
        return mapped if mapped is not None else self.ring.owner(tenant_id)

    def to_json(self) -> str:
        return json.dumps(dict(self.assignments), sort_keys=True, separators=(",", ":"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PlacementMap):
            return NotImplemented
        return dict(self.assignments) == dict(other.assignments)

    def __hash__(self) -> int:
        return hash(frozenset(self.assignments.items()))

    def __len__(self) -> int:
        return len(self.assignments)


def owner_of(tenant_id: str, placement: PlacementMap | None) -> str | None:
    """The shard that owns ``tenant_id`` under ``placement``.

    None means "any node": there is no map, or the map is empty and names no shard.
    """
    if placement is None:
        return None
    return placement.owner_of(tenant_id)


def validate_placement(value: object) -> PlacementMap:
    """Validate a decoded placement map: an object of tenant id -> shard id.

    Raises:
        InvalidArgumentError: ``value`` is not a mapping, or an entry's tenant id or shard
            id breaks ``[A-Za-z0-9_-]{1,64}``; the message names the entry.
    """
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(
            "placement map must be a JSON object of tenant id -> shard id, "
            f"got {type(value).__name__}"
        )
    entries: dict[str, str] = {}
    for tenant, shard in value.items():
        if not isinstance(tenant, str) or not TOKEN_PATTERN.fullmatch(tenant):
            raise InvalidArgumentError(
                f"placement map entry {quote(tenant)}: tenant id is invalid: "
                "use 1-64 characters of A-Z a-z 0-9 _ -"
            )
        if not isinstance(shard, str) or not TOKEN_PATTERN.fullmatch(shard):
            raise InvalidArgumentError(
                f"placement map entry {quote(tenant)}: shard id {quote(shard)} is invalid: "
                "use 1-64 characters of A-Z a-z 0-9 _ -"
            )
        entries[tenant] = shard
    return PlacementMap.of(entries)


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidArgumentError(f"placement map entry {quote(key)} appears more than once")
        result[key] = value
    return result


def parse_placement(raw: bytes | str) -> PlacementMap:
    """Parse and validate a placement map from JSON text (UTF-8 when bytes).

    Raises:
        InvalidArgumentError: the text is not UTF-8 or not JSON, a tenant appears twice,
            or ``validate_placement`` refuses it.
    """
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"placement map is not UTF-8 text: {exc}") from None
    try:
        decoded = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"placement map is not valid JSON: {exc}") from None
    return validate_placement(decoded)


class Hosting(enum.Enum):
    """Where a tenant belongs, seen from one node."""

    HOSTED = "hosted"
    """This node hosts the tenant."""
    ELSEWHERE = "elsewhere"
    """The placement gives the tenant to another shard."""
    NOT_ALLOWED = "not_allowed"
    """Placement would host it here, but the node's hosted-tenant allowlist excludes it."""


@dataclass(frozen=True, slots=True)
class PlacementDecision:
    """What one node hosts: its shard id, the current placement map, an optional
    hosted-tenant allowlist (``POST /admin/reload {"hosted_tenants": [...]}``) and, when
    the shard directory is followed, the ring over the live shards.

    ``placement=None`` (no map) hosts every tenant unless ``live`` is set;
    ``hosted_tenants=None`` allows all. With ``live`` (a ring over the shards alive in the
    directory), tenants absent from the map are placed on that ring instead of the ring
    over the map's shards: a shard that dies loses its ring tenants to the live ones, and
    tenants pinned by the map stay pinned (unavailable while their shard is down).
    """

    shard_id: str
    placement: PlacementMap | None = None
    hosted_tenants: frozenset[str] | None = None
    live: HashRing | None = None

    def __post_init__(self) -> None:
        validate_shard_id(self.shard_id)

    def owner_of(self, tenant_id: str) -> str | None:
        """The shard owning ``tenant_id`` (None: any node may host it)."""
        live = self.live
        if live is None:
            return owner_of(tenant_id, self.placement)
        if self.placement is not None:
            mapped = self.placement.assignments.get(tenant_id)
            if mapped is not None:
                return mapped
        return live.owner(tenant_id)

    def hosting(self, tenant_id: str) -> Hosting:
        """Whether this node hosts ``tenant_id``, and if not, why."""
        owner = self.owner_of(tenant_id)
        if owner is not None and owner != self.shard_id:
            return Hosting.ELSEWHERE
        if self.hosted_tenants is not None and tenant_id not in self.hosted_tenants:
            return Hosting.NOT_ALLOWED
        return Hosting.HOSTED

    def hosts(self, tenant_id: str) -> bool:
        return self.hosting(tenant_id) is Hosting.HOSTED

    def named_tenants(self) -> frozenset[str]:
        """Tenants this decision names explicitly (map entries and allowlist)."""
        named = set(self.placement.assignments) if self.placement is not None else set()
        if self.hosted_tenants is not None:
            named |= self.hosted_tenants
        return frozenset(named)

    def with_placement(self, placement: PlacementMap | None) -> PlacementDecision:
        return PlacementDecision(self.shard_id, placement, self.hosted_tenants, self.live)

    def with_live_shards(self, shards: Iterable[str] | None) -> PlacementDecision:
        """The same decision with ring placement over ``shards`` (None: over the map's
        shards, as without a directory). The ring is rebuilt only when the set changes."""
        if shards is None:
            live = None
        else:
            wanted = frozenset(shards)
            live = self.live if self.live is not None and self.live.shards == wanted else None
            live = live or HashRing(wanted)
        return PlacementDecision(self.shard_id, self.placement, self.hosted_tenants, live)

    @property
    def live_shards(self) -> frozenset[str] | None:
        """The shards the ring places unmapped tenants on, when the directory is followed."""
        return self.live.shards if self.live is not None else None

    def with_hosted_tenants(self, tenants: Iterable[str] | None) -> PlacementDecision:
        """The same decision with a new allowlist (None: allow every tenant).

        Raises:
            InvalidArgumentError: a tenant id is invalid.
        """
        if tenants is None:
            return PlacementDecision(self.shard_id, self.placement, None, self.live)
        if isinstance(tenants, str):
            raise InvalidArgumentError("hosted tenants must be a list of tenant ids")
        allowed = set()
        for tenant in tenants:
            if not isinstance(tenant, str) or not TOKEN_PATTERN.fullmatch(tenant):
                raise InvalidArgumentError(
                    f"hosted tenant {quote(tenant)} is invalid: "
                    "use 1-64 characters of A-Z a-z 0-9 _ -"
                )
            allowed.add(tenant)
        return PlacementDecision(self.shard_id, self.placement, frozenset(allowed), self.live)
