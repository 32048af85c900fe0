"""Programs built from plain Python functions, for tests that drive the handler with the
model's own rules (``specs/``). Production Python programs live in ``aggregate.programs``."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.lowlevel

from aggregate.programs.base import Accepted, Rejected

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from aggregate.domain.envelopes import JsonObject
    from aggregate.programs.base import AggregateTypeSpec, Decision


@dataclass(frozen=True)
class FunctionProgram:
    """decide/apply given as Python functions; a decide result with a ``reason`` attribute
    is a rejection."""

    name: str
    decide_fn: Callable[[JsonObject, JsonObject], Any]
    apply_fn: Callable[[JsonObject, JsonObject], JsonObject]

    async def decide(self, state: JsonObject, command: JsonObject) -> Decision:
        await anyio.lowlevel.checkpoint()
        decided = self.decide_fn(copy.deepcopy(state), copy.deepcopy(command))
        if hasattr(decided, "reason"):
            return Rejected(str(decided.reason))
        new_state = copy.deepcopy(state)
        for event in decided:
            new_state = self.apply_fn(new_state, event)
        return Accepted(list(decided), new_state)

    async def apply(self, state: JsonObject, events: Sequence[JsonObject]) -> JsonObject:
        await anyio.lowlevel.checkpoint()
        new_state = copy.deepcopy(state)
        for event in events:
            new_state = self.apply_fn(new_state, copy.deepcopy(event))
        return new_state


class StaticTypes:
    """A fixed ``TypeLookup``: aggregate type name → spec."""

    def __init__(self, specs: dict[str, AggregateTypeSpec]) -> None:
        self.specs = specs

    def get(self, name: str) -> AggregateTypeSpec:
        from aggregate.domain.errors import UnknownAggregateTypeError

        try:
            return self.specs[name]
        except KeyError:
            raise UnknownAggregateTypeError.of(name, self.specs) from None
