"""The aggregate-type manifest: which decide/apply programs serve which type (DESIGN §7).

This module holds the validated data only; ``aggregate.config`` reads it from files and
the environment, and ``aggregate.programs`` turns it into running programs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aggregate.domain.schemas import CommandSchemas


class Language(StrEnum):
    """How a program is written."""

    STARLARK = "starlark"
    PYTHON = "python"  # a trusted ``module:function`` reference, run in process


class Isolation(StrEnum):
    """Where a Starlark program runs."""

    PROCESS = "process"  # a pool of worker processes with memory and hard-time limits
    INLINE = "inline"  # in the service process: fastest, for trusted programs


ANY_TYPE = "*"
"""The manifest key of programs that serve every aggregate type a request names (the
programs given only by ``AGGREGATE_DECIDE_PROGRAM[_PATH]`` / ``AGGREGATE_APPLY_PROGRAM[_PATH]``).
Never a valid type name, so no manifest file can define it."""


@dataclass(frozen=True, slots=True)
class ProgramSource:
    """One program: its text (Starlark) or ``module:function`` reference (Python), and where
    it came from (a file path, or a description such as ``AGGREGATE_DECIDE_PROGRAM``)."""

    text: str
    origin: str


@dataclass(frozen=True, slots=True)
class AggregateTypeManifest:
    """One aggregate type: its decide and apply programs and how they run."""

    name: str
    decide: ProgramSource
    apply: ProgramSource
    language: Language = Language.STARLARK
    isolation: Isolation = Isolation.PROCESS
    initial_state: dict[str, Any] = field(default_factory=dict)
    schemas: CommandSchemas = field(default_factory=CommandSchemas)
    """Compiled JSON Schemas of command payloads, by command type (``schemas:``)."""
    examples: tuple[dict[str, Any], ...] = ()
    """Example commands (``examples:``) that ``aggregate check`` explores from."""
    indexes: tuple[str, ...] = ()
    """Field paths (``state.balance``) the read side's index keeps expression indexes on."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """Every configured aggregate type, by name."""

    types: dict[str, AggregateTypeManifest]
    origin: str = "<defaults>"
