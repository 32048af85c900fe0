"""The record of one committed command message, as the read side receives it.

The command handler makes one ``CommittedChange`` per message it appended (DESIGN §10: the
index and the watch are fed from the command path, with the state the handler already
computed); the indexer also makes them when it replays the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uuid

    from aggregate.domain.envelopes import Event, JsonObject
    from aggregate.domain.ids import AggregateKey


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
