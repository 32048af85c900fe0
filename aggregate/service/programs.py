"""Program reload as the running service does it, for ``POST /admin/programs/reload`` and
SIGHUP alike: reload on the island (``IslandCore.reload_programs``), then, for a rebuild,
delete the replaced types' snapshots on the Trio side and let the island load them again.

A rebuild is what makes a changed ``apply`` reach states already folded: without it,
cached states and snapshots stay as the old ``apply`` made them (applying old events is the
past) and the new ``apply`` only folds new events; with it, the replaced types' cached
aggregates are dropped at the swap, their pending and stored snapshots are deleted, and
their states are replayed from the events with the new ``apply`` as they are next used.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from aggregate.domain.errors import AggregateError, BackendUnavailableError

if TYPE_CHECKING:
    from aggregate.service.app import Service

log = logging.getLogger(__name__)


async def reload_programs(service: Service, *, rebuild: bool) -> dict[str, Any]:
    """Reload the service's programs; the report: ``added``, ``removed``, ``changed``,
    ``unchanged``, ``types`` (as ``GET /admin/programs``) and ``rebuilt`` (the types whose
    snapshots were deleted; ``["*"]``: every type).

    Raises:
        ProgramReloadError: refused; nothing changed.
        BackendUnavailableError: the service is not serving yet, or the snapshots of a
            rebuild could not be deleted (the programs were reloaded; the replaced types
            are read from their events only until a later rebuild succeeds).
    """
    core = service.core
    if core is None or service.snapshotter is None or service.snapshots is None:
        raise BackendUnavailableError("the service is not serving yet; reload when it is")
    outcome = await service.island.run(core.reload_programs, rebuild)
    report = outcome.as_dict()
    report["rebuilt"] = []
    types = outcome.replaced
    if rebuild and (types is None or types):
        # Shielded: once the swap is done, the rebuild is finished even if the admin client
        # goes away (the replaced types' snapshots are ignored until it is).
        with trio.CancelScope(shield=True):
            dropped = await service.snapshotter.discard_types(types)
            deleted = await service.snapshots.delete_types(types)
            await service.island.call(core.end_rebuild, types)
        report["rebuilt"] = ["*"] if types is None else types
        log.info(
            "rebuild of %s: %d pending and %d stored snapshots deleted",
            ", ".join(report["rebuilt"]),
            dropped,
            deleted,
        )
    return report


async def reload_on_signal(service: Service) -> None:
    """SIGHUP: reload the programs (no rebuild) and log the outcome; a refusal is logged,
    the programs loaded before keep serving."""
    if service.state != "serving":
        log.warning("SIGHUP received while %s: programs not reloaded", service.state)
        return
    log.info("SIGHUP received: reloading programs")
    try:
        report = await reload_programs(service, rebuild=False)
    except AggregateError as exc:
        log.error("SIGHUP: %s", exc.message)
        return
    log.info("SIGHUP: programs reloaded (changed: %s)", ", ".join(report["changed"]) or "none")
