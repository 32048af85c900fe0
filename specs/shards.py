"""The executable model of many shards (DESIGN §11): who owns a tenant, and what a move
and a failover do. Plain Python, obviously correct; no hashing tricks: the ring's choice
is taken as given (``ring_owner``), only the rules around it are modelled.

Rules:

1. A tenant pinned by the map is owned by its pinned shard, live or not (a pinned tenant
   of a dead shard is served by nobody until it is moved).
2. Any other tenant is owned by its place on the ring over the *live* shards; with no live
   shard, by nobody.
3. Exactly the owner accepts a tenant's commands; every other node refuses them naming
   the owner, and a refused command changes nothing.
4. A move pins the tenant to a live target; a failover (a shard dies) or a failback (it
   returns) changes the live set; none of them changes any stored aggregate, so no
   acknowledged command is lost or applied twice across them (the command model of
   ``specs.model`` runs unchanged on whichever node owns the tenant).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass
class ShardsModel:
    """Shards, which are live, and the map's pins."""

    shards: tuple[str, ...]
    ring_owner: Callable[[frozenset[str], str], str | None]
    live: set[str] = field(default_factory=set)
    pins: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.live:
            self.live = set(self.shards)

    def owner(self, tenant: str) -> str | None:
        if tenant in self.pins:
            return self.pins[tenant]
        return self.ring_owner(frozenset(self.live), tenant) if self.live else None

    def serving(self, tenant: str) -> str | None:
        """The shard that accepts the tenant's commands now (None: nobody)."""
        owner = self.owner(tenant)
        return owner if owner in self.live else None

    def accepts(self, shard: str, tenant: str) -> bool:
        return shard in self.live and self.owner(tenant) == shard

    def kill(self, shard: str) -> None:
        self.live.discard(shard)

    def revive(self, shard: str) -> None:
        self.live.add(shard)

    def move(self, tenant: str, target: str) -> bool:
        """Pin ``tenant`` to ``target``; refused (False, nothing changes) unless live."""
        if target not in self.live:
            return False
        self.pins[tenant] = target
        return True
