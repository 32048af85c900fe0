"""What the explorer needs from a program: sync calls (Hypothesis drives it from plain
functions), with the errors of ``AggregateProgram``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aggregate.domain.envelopes import JsonObject
    from aggregate.programs.base import Decision


class ProgramRunner(Protocol):
    """One place a type's programs run (a worker process, or this process)."""

    @property
    def where(self) -> str:
        """Where the calls run, for messages (``worker process 1``)."""
        ...

    def decide(self, state: JsonObject, command: JsonObject) -> Decision:
        """As ``AggregateProgram.decide``. Raises: ProgramError, ProgramLimitError,
        InvalidArgumentError."""
        ...

    def apply(self, state: JsonObject, events: Sequence[JsonObject]) -> JsonObject:
        """As ``AggregateProgram.apply``. Raises as ``decide``."""
        ...
