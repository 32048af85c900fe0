"""The record of one committed command message, as the read side receives it.

The command handler makes one ``CommittedChange`` per message it appended (DESIGN §10: the
index and the watch are fed from the command path, with the state the handler already
computed); the indexer also makes them when it replays the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aggregate.domain.errors import InvalidArgumentError
from aggregate.domain.ids import (
    AggregateKey,
    canonical_uuid,
    validate_aggregate_type,
    validate_tenant_id,
)

if TYPE_CHECKING:
    import uuid

    from aggregate.domain.envelopes import Event, JsonObject


@dataclass(frozen=True, slots=True)
class CommittedChange:
    """One command message of one aggregate, stored in the stream at ``position``.

    ``previous_position`` is the stream sequence of the aggregate's message before it (0:
    this is its first); ``version`` the aggregate's version after it; ``state`` the state
    after it (never changed in place: programs return new state objects).
    """

    key: AggregateKey
    position: int
    previous_position: int
    version: int
    command_id: uuid.UUID
    events: tuple[Event, ...]
    state: JsonObject

    @property
    def updated_at(self) -> str:
        """The timestamp of the message's last event (RFC 3339 UTC)."""
        return self.events[-1].timestamp if self.events else ""


def key_of_subject(subject: str) -> AggregateKey | None:
    """The aggregate a stream subject ``tenant.<t>.aggregate.<type>.<id>`` names, or None
    when it is not such a subject (bad tokens, an id not in the canonical form)."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != "tenant" or parts[2] != "aggregate":
        return None
    aggregate_id = canonical_uuid(parts[4])
    if aggregate_id is None:
        return None
    try:
        return AggregateKey(
            validate_tenant_id(parts[1]), validate_aggregate_type(parts[3]), aggregate_id
        )
    except InvalidArgumentError:
        return None
