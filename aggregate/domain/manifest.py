"""The aggregate-type manifest: which decide/apply programs serve which type (DESIGN §7).

This module holds the validated data only; ``aggregate.config`` reads it from files and
the environment, and ``aggregate.programs`` turns it into running programs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Language(StrEnum):
    """How a program is written."""

    STARLARK = "starlark"
    PYTHON = "python"  # a trusted ``module:function`` reference, run in process


class Isolation(StrEnum):
    """Where a Starlark program runs."""

    PROCESS = "process"  # a pool of worker processes with memory and hard-time limits
    INLINE = "inline"  # in the service process: fastest, for trusted programs


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
    indexes: tuple[str, ...] = ()
    """Field paths (``state.balance``) the read side's index keeps expression indexes on."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """Every configured aggregate type, by name."""

    types: dict[str, AggregateTypeManifest]
    origin: str = "<defaults>"
