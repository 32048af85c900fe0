"""A broken trusted Python program for ``aggregate check``: decide counts its own calls, so
the same state and command get different answers."""

from __future__ import annotations

import itertools
from typing import Any

_calls = itertools.count()


def decide(state: dict[str, Any], command: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "Counted", "call": next(_calls)}]


def apply(state: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    return {"calls": event["call"]}
