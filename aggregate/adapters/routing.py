"""Where tenants are served, read straight from NATS KV (the CLI's ``shards`` and ``route``
verbs): the live entries of the shard directory and the placement map, without asking any
node. Blocking: each call runs its own short asyncio loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import nats.errors

from aggregate.adapters.jetstream.connect import open_connection
from aggregate.adapters.placement_kv import PlacementWatcher
from aggregate.adapters.shard_directory import ShardDirectory
from aggregate.domain.errors import BackendUnavailableError
from aggregate.domain.placement import HashRing

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from aggregate.domain.directory import ShardEntry
    from aggregate.domain.placement import PlacementMap


@dataclass(frozen=True)
class Routing:
    """The live shards (by id) and the placement map (None: no map)."""

    shards: dict[str, ShardEntry]
    placement: PlacementMap | None

    def route(self, tenant_id: str) -> dict[str, Any]:
        """Which shard owns ``tenant_id`` and where to reach it: the map's shard when the
        map names the tenant (``pinned``), else its place on the ring over the live shards.
        ``live`` is false when the owner has no directory entry (down, or not started)."""
        mapped = self.placement.assignments.get(tenant_id) if self.placement else None
        owner = mapped if mapped is not None else HashRing(self.shards).owner(tenant_id)
        entry = self.shards.get(owner) if owner is not None else None
        return {
            "tenant_id": tenant_id,
            "owner": owner,
            "pinned": mapped is not None,
            "live": entry is not None,
            "grpc_addr": entry.grpc_addr if entry else None,
            "http_addr": entry.http_addr if entry else None,
        }


async def _read(
    servers: list[str], directory_bucket: str, placement_bucket: str, key: str, timeout_s: float
) -> Routing:
    nc = await open_connection(servers, timeout_s=timeout_s, reconnect=False, setting="--timeout")
    try:
        directory = ShardDirectory(
            nc, shard_id="-", bucket=directory_bucket, request_timeout=timeout_s
        )
        watcher = PlacementWatcher(
            nc, bucket=placement_bucket, key=key, request_timeout=timeout_s, startup_attempts=1
        )
        updates = cast("AsyncGenerator[PlacementMap | None, None]", watcher.updates())
        try:
            shards = await directory.read()
            placement = await anext(updates)  # the first item is the current map
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise BackendUnavailableError(
                f"cannot read the routing from NATS KV: {exc!r}"
            ) from None
        finally:
            await updates.aclose()
        return Routing(shards, placement)
    finally:
        await nc.close()


def read_routing(
    servers: list[str],
    *,
    directory_bucket: str,
    placement_bucket: str,
    placement_key: str,
    timeout: float = 10.0,
) -> Routing:
    """The live shard directory and the placement map.

    Raises:
        BackendUnavailableError: NATS cannot be reached or read within ``timeout`` seconds.
    """
    return asyncio.run(_read(servers, directory_bucket, placement_bucket, placement_key, timeout))
