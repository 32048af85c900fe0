"""The watch's semantics, in plain Python (DESIGN §10).

A *change* is one committed command message: its position (stream sequence), aggregate and
the version and state after it. A watch of a subset (tenant; type or every type; aggregate
or every aggregate; a predicate over the new view or none) after a position must deliver
exactly ``watched(...)``: every change of the subset after that position, in position order,
none twice, none missing. A watch that ended (for any reason) and is resumed from the last
position it delivered continues that same list: what all its calls delivered, one after
the other, is a prefix of ``watched(...)`` of the first call, and all of it once the
writers stop and the watch is open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Iterable


@dataclass(frozen=True)
class ModelChange:
    position: int
    tenant: str
    aggregate_type: str
    aggregate_id: uuid.UUID
    version: int
    state: dict[str, Any]


@dataclass(frozen=True)
class ModelSubset:
    tenant: str
    aggregate_type: str = ""
    aggregate_id: uuid.UUID | None = None
    predicate: Callable[[dict[str, Any]], bool] | None = None
    """Over the new state (the machine's stand-in for a filter)."""

    def holds(self, change: ModelChange) -> bool:
        return (
            change.tenant == self.tenant
            and (not self.aggregate_type or change.aggregate_type == self.aggregate_type)
            and (self.aggregate_id is None or change.aggregate_id == self.aggregate_id)
            and (self.predicate is None or self.predicate(change.state))
        )


def watched(changes: Iterable[ModelChange], subset: ModelSubset, after: int) -> list[ModelChange]:
    """Every change of ``subset`` with a position after ``after``, in position order."""
    return sorted(
        (c for c in changes if c.position > after and subset.holds(c)), key=lambda c: c.position
    )
