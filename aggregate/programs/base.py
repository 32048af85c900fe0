"""What a decide/apply program is, seen from the handler (DESIGN §7).

A program answers ``decide(state, command)`` with either the events to append and the state
after applying them (``Accepted``), or a business rejection (``Rejected``). Implementations:
Starlark ``inline`` and ``process`` isolation, and trusted Python callables. Inputs are never
mutated: implementations copy or convert them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from aggregate.domain.errors import MAX_MESSAGE_BYTES, ConfigError, bound_message

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aggregate.domain.envelopes import JsonObject
    from aggregate.domain.schemas import CommandSchemas


@dataclass(frozen=True, slots=True)
class Accepted:
    """``decide`` returned ``events`` (each ``{"type": ..., **payload}``); ``state`` is the
    result of applying them in order to the state ``decide`` saw."""

    events: list[JsonObject]
    state: JsonObject


MAX_REJECTION_REASON_BYTES = MAX_MESSAGE_BYTES
"""Longest rejection reason a client is sent (UTF-8 bytes, 1 KiB); a longer one is cut and
ends with ``…(N chars)``, N its full length."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """``decide`` rejected the command; ``reason`` is the program's text, cut to
    ``MAX_REJECTION_REASON_BYTES``.

    Trusted Python ``decide`` functions return one (``return Rejected("insufficient
    funds")``); Starlark programs call their ``reject("...")`` global instead.
    """

    reason: str

    def __post_init__(self) -> None:
        if isinstance(self.reason, str):
            object.__setattr__(
                self, "reason", bound_message(self.reason, MAX_REJECTION_REASON_BYTES)
            )


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
    """A configured aggregate type: its program and the state before any event.

    ``version`` is the program version (``program_version``: the hash of the decide and
    apply texts) stored with every message this spec decides; empty when unknown (fakes).
    ``schemas`` are its command schemas (``None``: none), checked before the program runs,
    so a swap of specs swaps them with the programs.
    """

    name: str
    program: AggregateProgram
    initial_state: JsonObject = field(default_factory=dict)
    version: str = ""
    schemas: CommandSchemas | None = None


def _default_pool_size() -> int:
    return max(1, min(4, os.cpu_count() or 1))


LIMIT_SETTINGS = {
    "soft_timeout_seconds": "AGGREGATE_PROGRAM_TIMEOUT_MS",
    "hard_timeout_seconds": "AGGREGATE_PROGRAM_HARD_TIMEOUT_MS",
    "max_memory_bytes": "AGGREGATE_PROGRAM_MAX_MEMORY_MB",
    "pool_size": "AGGREGATE_PROGRAM_WORKERS",
    "max_batch_calls": "AGGREGATE_PROGRAM_BATCH_CALLS",
}
"""The service setting behind each limit that has one (named in messages to operators)."""


def limit_name(field_name: str) -> str:
    """``field_name``, with its setting when it has one: ``max_memory_bytes, setting
    AGGREGATE_PROGRAM_MAX_MEMORY_MB``."""
    setting = LIMIT_SETTINGS.get(field_name)
    return f"{field_name}, setting {setting}" if setting else field_name


@dataclass(frozen=True, slots=True)
class ProgramLimits:
    """Budgets for running programs (DESIGN §7).

    - ``soft_timeout_seconds``: per step, enforced inside the interpreter through
      ``check_cancelled``; the step raises ``ProgramLimitError``. Inline and process modes.
      A step is one ``decide`` together with the applies of the events it returns (they
      share the one budget), a program's top-level code at compile time, or a rehydration
      batch of ``n`` events folded in one call with a budget of
      ``soft_timeout_seconds + n * timeout_per_event_seconds``.
    - ``hard_timeout_seconds``: per round trip to a worker process (process mode); past it
      the worker is killed and respawned. A rehydration batch of ``n`` events gets
      ``hard_timeout_seconds + n * timeout_per_event_seconds``. This catches single
      operations the interpreter cannot interrupt (``x = x * x`` on huge integers).
    - ``max_memory_bytes``: address-space limit (``RLIMIT_AS``) of each worker process.
    - ``max_callstack_size``: Starlark call-stack depth (kept small: values near 20,000
      overflow the native stack and crash the host).
    - ``max_input_depth``: maximum nesting of dicts/lists in state, command and events
      handed to a program, and in what it returns.
    - ``pool_size``: number of worker processes (process mode).
    - ``max_message_bytes``: largest request or answer exchanged with a worker.
    - ``startup_timeout_seconds``: how long a new worker may take to report ready.
    - ``inline_slice_seconds``: how long an ``inline`` step may hold the event loop. A step
      still running after it is stopped and run again, from the start, in a thread (programs
      are deterministic and have no side effects), so the loop keeps serving.
    - ``max_batch_calls``: most calls sent to a worker in one frame when calls queue for
      the workers (process mode); 1 sends every call alone.
    """

    soft_timeout_seconds: float = 1.0
    hard_timeout_seconds: float = 5.0
    timeout_per_event_seconds: float = 0.005
    max_memory_bytes: int = 512 * 1024 * 1024
    max_callstack_size: int = 100
    max_input_depth: int = 64
    pool_size: int = field(default_factory=_default_pool_size)
    max_message_bytes: int = 64 * 1024 * 1024
    startup_timeout_seconds: float = 30.0
    inline_slice_seconds: float = 0.01
    max_batch_calls: int = 16

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = int if f.type == "int" else int | float
            if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
                what = "integer" if f.type == "int" else "number"
                raise ConfigError(
                    f"program limit {f.name} must be a positive {what}, got {value!r}"
                )
        if not 16 <= self.max_callstack_size <= 1000:
            raise ConfigError(
                "program limit max_callstack_size must be between 16 and 1000 (large values "
                f"overflow the native stack), got {self.max_callstack_size}"
            )
        if self.max_memory_bytes < 64 * 1024 * 1024:
            raise ConfigError(
                "program limit max_memory_bytes must be at least 64 MiB (a worker process "
                f"needs ~30 MiB of address space to start), got {self.max_memory_bytes}"
            )
        if self.hard_timeout_seconds < self.soft_timeout_seconds:
            raise ConfigError(
                "program limit hard_timeout_seconds must be at least soft_timeout_seconds "
                f"({self.hard_timeout_seconds} < {self.soft_timeout_seconds})"
            )

    def to_json(self) -> dict[str, Any]:
        """The limits as a JSON object (sent to worker processes)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ProgramLimits:
        """Inverse of ``to_json``.

        Raises:
            ConfigError: unknown or invalid fields.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"unknown program limits: {', '.join(unknown)}")
        return cls(**value)
