"""What a decide/apply program is, seen from the handler (DESIGN §7).

A program answers ``decide(state, command)`` with either the events to append and the state
after applying them (``Accepted``), or a business rejection (``Rejected``). Implementations:
Starlark ``inline`` and ``process`` isolation, and trusted Python callables. Inputs are never
mutated: implementations copy or convert them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aggregate.domain.envelopes import JsonObject


@dataclass(frozen=True, slots=True)
class Accepted:
    """``decide`` returned ``events`` (each ``{"type": ..., **payload}``); ``state`` is the
    result of applying them in order to the state ``decide`` saw."""

    events: list[JsonObject]
    state: JsonObject


@dataclass(frozen=True, slots=True)
class Rejected:
    """``decide`` rejected the command; ``reason`` is the program's text."""

    reason: str


Decision = Accepted | Rejected


class AggregateProgram(Protocol):
    """The decide/apply pair of one aggregate type."""

    @property
    def name(self) -> str:
        """The aggregate type name, used in errors and metrics."""
        ...

    async def decide(self, state: JsonObject, command: JsonObject) -> Decision:
        """Run decide, then apply for each decided event, in one step.

        Raises:
            ProgramError: the program crashed or returned a malformed value (names the
                program, line and column when known).
            ProgramLimitError: the program ran past its time, memory or stack budget.
        """
        ...

    async def apply(self, state: JsonObject, events: Sequence[JsonObject]) -> JsonObject:
        """Apply ``events`` in order (rehydration). Raises as ``decide``."""
        ...


@dataclass(frozen=True, slots=True)
class AggregateTypeSpec:
    """A configured aggregate type: its program and the state before any event."""

    name: str
    program: AggregateProgram
    initial_state: JsonObject = field(default_factory=dict)
