"""Many shards: this node's advertised addresses, and online tenant moves.

A move (``POST /admin/tenant/{id}/move``, ``aggregate tenant move``) runs on whichever node
receives it, in this order:

1. the target must be live in the shard directory; the current owner is the placement's;
2. the owner drains the tenant (a hand drain: it admits none of its commands and waits
   for those in flight), over its admin API unless it is this node; a dead owner is skipped;
3. the placement map in KV gets ``tenant -> target`` (every node's watcher follows it);
4. the target ends any hand drain of the tenant and is polled until it accepts it;
5. ``wait_for_read_side`` (a hook: once the read side exists, wait until the new owner's
   index of the tenant is current);
6. the old owner ends its hand drain (the map now sends the tenant's commands elsewhere).

The window reported is from the start of the drain to the target accepting: the time a
client that follows ``x-owner-addr`` (``aggregate.client``) waits. No acknowledged command
is lost or applied twice: commands in flight on the old owner finish before the map moves,
and two writers of one aggregate would still be serialised by the conditional append.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import nats.errors
import trio

from aggregate import __version__
from aggregate.adapters.admin_client import admin_call
from aggregate.domain.directory import (
    WILDCARD_HOSTS,
    ShardEntry,
    dial_address,
    validate_dial_address,
)
from aggregate.domain.errors import (
    BackendUnavailableError,
    ConfigError,
    InvalidArgumentError,
    TenantMoveError,
    VersionConflictError,
)
from aggregate.domain.placement import PlacementMap

if TYPE_CHECKING:
    from aggregate.bridge import Island
    from aggregate.config import Settings
    from aggregate.service.core import IslandCore

log = logging.getLogger(__name__)

PROBE_INTERVAL = 0.02
"""Seconds between two readiness probes of the new owner during a move."""


def _advertised(
    configured: str | None, bound: tuple[str, int], name: str, host_hint: str | None
) -> str:
    if configured is not None:
        return configured
    host, port = bound
    if host in WILDCARD_HOSTS:
        host = host_hint or socket.gethostname()
    try:
        return validate_dial_address(dial_address(host, port), name)
    except InvalidArgumentError as exc:
        raise ConfigError(
            f"{exc.message}; set AGGREGATE_{name.upper()} to a host:port clients can dial"
        ) from None


def advertised_entry(
    settings: Settings, grpc_bound: tuple[str, int], http_bound: tuple[str, int]
) -> ShardEntry:
    """This node's directory entry: the advertise settings, else the bound addresses with
    a wildcard host (``0.0.0.0``, ``::``) replaced by this machine's host name.

    Raises:
        ConfigError: the derived address is not one a client can dial.
    """
    grpc_addr = _advertised(settings.advertise_grpc_addr, grpc_bound, "advertise_grpc_addr", None)
    grpc_host = grpc_addr.rpartition(":")[0].strip("[]")
    http_addr = _advertised(
        settings.advertise_http_addr,
        http_bound,
        "advertise_http_addr",
        grpc_host if settings.advertise_grpc_addr is not None else None,
    )
    return ShardEntry(
        shard_id=settings.shard_id,
        grpc_addr=grpc_addr,
        http_addr=http_addr,
        started_at=round(time.time(), 3),
        version=__version__,
    )


@dataclass(frozen=True, slots=True)
class MoveReport:
    """How a move ended: from which shard to which, whether anything moved, the drain on
    the old owner, and the window (ms) during which no shard accepted the tenant."""

    tenant_id: str
    from_shard: str | None
    to_shard: str
    moved: bool
    drained: bool
    in_flight: int
    window_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "from": self.from_shard,
            "to": self.to_shard,
            "moved": self.moved,
            "drained": self.drained,
            "in_flight": self.in_flight,
            "window_ms": round(self.window_ms, 3),
        }


class TenantMover:
    """Moves tenants between shards on behalf of the admin API (Trio side).

    ``token`` is this node's admin token, sent to the other nodes (a cluster shares one).
    """

    def __init__(self, island: Island, core: IslandCore, *, token: str | None) -> None:
        self._island = island
        self._core = core
        self._token = token

    async def wait_for_read_side(self, tenant_id: str, entry: ShardEntry, deadline: float) -> None:
        """Hook: wait until the new owner's read-side index of ``tenant_id`` is current.

        There is no read side yet, so there is nothing to wait for; once it exists this
        asks the new owner (``entry``) for the tenant's index position and waits, until
        ``deadline`` (``trio.current_time()``), for it to reach the stream's last sequence.
        """
        return

    async def move(self, tenant_id: str, target: str, timeout_s: float) -> MoveReport:
        """Move ``tenant_id`` to shard ``target`` within ``timeout_s`` seconds.

        Raises:
            TenantMoveError: the directory is off, the target is not live, the owner's drain
                failed, or the target did not accept the tenant in time.
            BackendUnavailableError: the placement map could not be written.
        """
        core, island = self._core, self._island
        directory, gate, watcher = core.directory, core.gate, core.watcher
        if directory is None or gate is None or watcher is None:
            raise TenantMoveError(
                "tenant moves need the shard directory (AGGREGATE_SHARD_DIRECTORY=true)"
            )
        deadline = trio.current_time() + timeout_s
        entries: dict[str, ShardEntry] = await island.call(
            lambda: {s: e for s in directory.live_shards() if (e := directory.entry(s))}
        )
        if target not in entries:
            raise TenantMoveError(
                f"shard {target!r} is not in the shard directory; live shards: "
                f"{', '.join(sorted(entries)[:20]) or 'none'}"
            )
        owner = await island.call(lambda: gate.decision.owner_of(tenant_id))
        if owner == target:
            return MoveReport(tenant_id, owner, target, False, True, 0, 0.0)
        started = time.perf_counter()
        drained, in_flight = await self._drain(tenant_id, owner, entries, deadline)
        await self._write_map(tenant_id, target)
        await self._accept_on(tenant_id, target, entries, deadline)
        window_ms = (time.perf_counter() - started) * 1000
        await self.wait_for_read_side(tenant_id, entries[target], deadline)
        if owner is not None and owner in entries:
            await self._reopen(tenant_id, owner, entries, deadline)
        report = MoveReport(tenant_id, owner, target, True, drained, in_flight, window_ms)
        log.info(
            "tenant %s moved from shard %s to %s (window %.1f ms)",
            tenant_id,
            owner,
            target,
            window_ms,
            extra={"tenant_id": tenant_id, "move": report.as_dict()},
        )
        return report

    def _remaining(self, deadline: float) -> float:
        left = deadline - trio.current_time()
        if left <= 0:
            raise TenantMoveError("the tenant move ran out of time; the map may name either shard")
        return left

    async def _remote(
        self, entry: ShardEntry, method: str, path: str, body: object, deadline: float
    ) -> tuple[int, Any]:
        timeout = self._remaining(deadline)
        try:
            return await trio.to_thread.run_sync(
                lambda: admin_call(
                    entry.http_addr, method, path, body=body, token=self._token, timeout=timeout
                ),
                abandon_on_cancel=True,
            )
        except BackendUnavailableError as exc:
            raise TenantMoveError(f"shard {entry.shard_id!r}: {exc.message}") from None

    def _is_self(self, shard: str) -> bool:
        return shard == self._core.settings.shard_id

    async def _drain(
        self,
        tenant_id: str,
        owner: str | None,
        entries: dict[str, ShardEntry],
        deadline: float,
    ) -> tuple[bool, int]:
        gate = self._core.gate
        assert gate is not None
        if owner is None or self._is_self(owner):
            result = await self._island.run(gate.drain, tenant_id, self._remaining(deadline))
            return result.drained, result.in_flight
        if owner not in entries:
            log.warning(
                "tenant %s: its owner %s is not in the shard directory; moving it without a drain",
                tenant_id,
                owner,
            )
            return True, 0
        left_ms = int(self._remaining(deadline) * 1000)
        status, answer = await self._remote(
            entries[owner],
            "POST",
            f"/admin/tenant/{tenant_id}/drain",
            {"timeout_ms": left_ms},
            deadline,
        )
        if status not in (200, 202) or not isinstance(answer, dict):
            raise TenantMoveError(f"shard {owner!r} refused to drain the tenant (HTTP {status})")
        return bool(answer.get("drained")), int(answer.get("in_flight") or 0)

    async def _write_map(self, tenant_id: str, target: str) -> None:
        watcher = self._core.watcher
        assert watcher is not None

        def pin(current: PlacementMap | None) -> PlacementMap:
            entries = dict(current.assignments) if current is not None else {}
            entries[tenant_id] = target
            return PlacementMap.of(entries)

        try:
            await self._island.run(watcher.update_placement, pin)
        except (InvalidArgumentError, VersionConflictError) as exc:
            raise TenantMoveError(f"the placement map was not written: {exc.message}") from None
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise BackendUnavailableError(
                f"the placement map could not be written: {type(exc).__name__}"
            ) from None

    async def _accept_on(
        self, tenant_id: str, target: str, entries: dict[str, ShardEntry], deadline: float
    ) -> None:
        core = self._core
        gate, controller = core.gate, core.controller
        assert gate is not None
        assert controller is not None
        if self._is_self(target):
            await self._island.call(gate.accept, tenant_id)

            left = self._remaining(deadline)  # Trio's clock: read it here, not on the island

            async def accepted() -> None:
                with anyio.fail_after(left):
                    await controller.wait_until(lambda: gate.status(tenant_id).accepting)

            try:
                await self._island.run(accepted)
            except TimeoutError:
                raise TenantMoveError(
                    f"this shard did not accept tenant {tenant_id!r} before the deadline"
                ) from None
            return
        entry = entries[target]
        await self._remote(entry, "POST", f"/admin/tenant/{tenant_id}/accept", None, deadline)
        while True:
            status, answer = await self._remote(
                entry, "GET", f"/admin/tenant/{tenant_id}/ready", None, deadline
            )
            if status == 200 and answer is True:
                return
            if trio.current_time() + PROBE_INTERVAL >= deadline:
                raise TenantMoveError(
                    f"shard {target!r} did not accept tenant {tenant_id!r} before the deadline"
                )
            await trio.sleep(PROBE_INTERVAL)

    async def _reopen(
        self, tenant_id: str, owner: str, entries: dict[str, ShardEntry], deadline: float
    ) -> None:
        gate = self._core.gate
        assert gate is not None
        if self._is_self(owner):
            await self._island.call(gate.accept, tenant_id)
            return
        try:
            await self._remote(
                entries[owner], "POST", f"/admin/tenant/{tenant_id}/accept", None, deadline
            )
        except TenantMoveError as exc:  # the move is done; the old owner keeps refusing
            log.warning("tenant %s: the old owner's drain was not ended: %s", tenant_id, exc)
