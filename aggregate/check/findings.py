"""What ``aggregate check`` reports: a finding names its kind, the aggregate type, what
happened, and the shortest command sequence found that makes it happen."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aggregate.domain.errors import ProgramError, ProgramLimitError


class FindingKind(StrEnum):
    """The kinds of finding, in the order they are reported."""

    NONDETERMINISTIC = "nondeterministic"
    """The same state and command gave different answers: twice in one process, in two
    processes, or ``apply`` replaying ``decide``'s events built another state."""
    APPLY_FAILED = "apply_failed"
    """``apply`` crashed on an event ``decide`` had just produced."""
    DECIDE_CRASHED = "decide_crashed"
    """``decide`` crashed (or returned a malformed value) instead of rejecting."""
    STATE_NOT_JSON = "state_not_json"
    """A state (or event) that is not plain JSON (non-string keys, non-finite numbers)."""
    STATE_TOO_LARGE = "state_too_large"
    """The state grew past the size limit (``--max-state-bytes``)."""
    TOO_MANY_EVENTS = "too_many_events"
    """One command produced more events than the limit (``--max-events``)."""
    OVER_BUDGET = "over_budget"
    """A step ran past the program time budget (or its stack or memory budget)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem, with the commands (from the initial state) that lead to it; the last
    command is the one whose step went wrong."""

    kind: FindingKind
    aggregate_type: str
    message: str
    commands: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "aggregate_type": self.aggregate_type,
            "message": self.message,
            "commands": self.commands,
        }


class FoundError(Exception):
    """Raised inside an exploration step: the step showed ``kind``."""

    def __init__(self, kind: FindingKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.step: int | None = None  # index of the command whose step failed


_ROLE = re.compile(r"^[^:\n]*: (?:the Starlark interpreter failed in )?(decide|apply)\b")
_CRASH = re.compile(r"^[^:\n]*: (?:decide|apply) (?:failed at |\([^\n]*?\) raised )")
"""A program's own crash (its message follows, and may say anything)."""
_NOT_JSON = ("not plain JSON", "is refused", "not a JSON value", "not a finite number")


def classify(exc: ProgramError | ProgramLimitError) -> FindingKind:
    """The finding a program error during a decide step shows: a limit is
    ``OVER_BUDGET``; a value that is not JSON is ``STATE_NOT_JSON``; otherwise the role the
    error names (``apply`` or ``decide``) decides."""
    if isinstance(exc, ProgramLimitError):
        return FindingKind.OVER_BUDGET
    message = exc.message
    if _CRASH.match(message) is None and any(marker in message for marker in _NOT_JSON):
        return FindingKind.STATE_NOT_JSON
    match = _ROLE.match(message)
    if match is not None and match.group(1) == "apply":
        return FindingKind.APPLY_FAILED
    return FindingKind.DECIDE_CRASHED
