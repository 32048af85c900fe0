"""The search: Hypothesis draws command sequences for one aggregate type (from its command
schemas through hypothesis-jsonschema, and from its example commands), runs each from the
initial state, and checks every step; a failing sequence is shrunk to a shortest one.

One search finds one kind of finding; the search is repeated with the kinds found so far
ignored, until a round finds nothing new, so each kind is reported once, with its own
shrunk sequence. Every step of a sequence:

1. ``decide`` twice where it runs first, and once in a second process: all three answers
   must be equal (non-determinism);
2. a program error is a finding (``classify``): a crash of ``decide`` instead of a
   rejection, of ``apply`` on an event ``decide`` produced, a value that is not JSON, a
   step over the time budget;
3. an accepted command: at most ``max_events`` events, a plain-JSON state of at most
   ``max_state_bytes``, and ``apply`` replaying the events must build the same state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException

from aggregate.check.findings import Finding, FindingKind, FoundError, classify
from aggregate.domain.errors import (
    InvalidArgumentError,
    ProgramError,
    ProgramLimitError,
    bound_message,
    quote,
)
from aggregate.domain.json_input import loads_json
from aggregate.programs.base import Accepted, Rejected
from aggregate.programs.values import json_copy, json_problem

if TYPE_CHECKING:
    from collections.abc import Callable

    from hypothesis.strategies import SearchStrategy

    from aggregate.check.ports import ProgramRunner
    from aggregate.domain.envelopes import JsonObject
    from aggregate.domain.manifest import AggregateTypeManifest
    from aggregate.programs.base import Decision

MAX_FINDING_MESSAGE_BYTES = 2048


@dataclass(frozen=True, slots=True)
class ExploreOptions:
    """How hard to look, and the limits a step must keep."""

    examples: int = 100  # command sequences per search round (Hypothesis max_examples)
    seed: int = 0
    max_steps: int = 20  # commands in one sequence
    max_events: int = 100  # events one command may produce
    max_state_bytes: int = 1024 * 1024  # the state as compact JSON
    max_depth: int = 64  # the service's JSON bounds (AGGREGATE_MAX_JSON_DEPTH)
    max_int_digits: int = 100  # (AGGREGATE_MAX_JSON_INT_DIGITS)


def _fits(command: object, type_spec: AggregateTypeManifest, options: ExploreOptions) -> bool:
    """Would the service hand ``command`` to ``decide``: within the boundary's JSON bounds,
    and matching its schema?"""
    if not isinstance(command, dict):
        return False
    try:
        text = json.dumps(command, allow_nan=False)
        loads_json(
            text, what="payload", max_depth=options.max_depth, max_int_digits=options.max_int_digits
        )
        type_spec.schemas.validate(command)
    except (ValueError, InvalidArgumentError):
        return False
    return True


def _with_type(kind: str) -> Callable[[Any], Any]:
    def with_type(payload: Any) -> Any:
        return {**payload, "type": kind} if isinstance(payload, dict) else payload

    return with_type


def command_strategy(
    type_spec: AggregateTypeManifest, options: ExploreOptions, warnings: list[str]
) -> SearchStrategy[dict[str, Any]] | None:
    """Commands for ``type_spec``: from each schema (its ``type`` set to the command type)
    and the example commands; ``None`` when there are neither."""
    from aggregate.check.jsonschema_compat import from_schema

    parts: list[SearchStrategy[Any]] = []
    for kind, schema in sorted(type_spec.schemas.schemas.items()):
        try:
            payloads = from_schema(schema)
        except Exception as exc:  # hypothesis-jsonschema's refusals are of many types
            warnings.append(
                f"aggregate type {type_spec.name}: no commands are generated from the schema "
                f"of {kind}: {bound_message(str(exc), 200)}"
            )
            continue
        parts.append(payloads.map(_with_type(kind)))
    if type_spec.examples:
        parts.append(st.sampled_from([json_copy(e) for e in type_spec.examples]))
    if not parts:
        return None
    return st.one_of(parts).filter(lambda c: _fits(c, type_spec, options))


def _describe(decision: Decision) -> str:
    if isinstance(decision, Rejected):
        return f"reject({quote(decision.reason)})"
    kinds = [e.get("type") for e in decision.events]
    return f"events {quote(kinds)} and state {quote(decision.state)}"


class _Steps:
    """Runs command sequences of one type and raises ``FoundError`` at a bad step."""

    def __init__(
        self,
        type_spec: AggregateTypeManifest,
        runners: tuple[ProgramRunner, ProgramRunner],
        options: ExploreOptions,
    ) -> None:
        self.type_spec = type_spec
        self.first, self.second = runners
        self.options = options

    def run(self, commands: list[dict[str, Any]]) -> None:
        state: JsonObject = json_copy(self.type_spec.initial_state)
        for index, command in enumerate(commands):
            try:
                state = self.step(state, command)
            except FoundError as found:
                found.step = index
                raise

    def _decide(self, runner: ProgramRunner, state: JsonObject, command: JsonObject) -> Any:
        try:
            return runner.decide(json_copy(state), json_copy(command))
        except (ProgramError, ProgramLimitError) as exc:
            raise FoundError(classify(exc), exc.message) from None
        except InvalidArgumentError:
            return None  # refused before decide (too deep for the program): never runs

    def step(self, state: JsonObject, command: JsonObject) -> JsonObject:
        first, second = self.first, self.second
        one = self._decide(first, state, command)
        if one is None:
            return state
        again = self._decide(first, state, command)
        if again != one:
            raise FoundError(
                FindingKind.NONDETERMINISTIC,
                f"decide answered the same state and command differently twice in "
                f"{first.where}: {_describe(one)}, then {_describe(again)}",
            )
        other = self._decide(second, state, command)
        if other != one:
            raise FoundError(
                FindingKind.NONDETERMINISTIC,
                f"decide answered the same state and command differently in {first.where} "
                f"({_describe(one)}) and in {second.where} ({_describe(other)})",
            )
        if isinstance(one, Rejected):
            return state
        assert isinstance(one, Accepted)
        return self._accepted(state, one)

    def _accepted(self, state: JsonObject, decision: Accepted) -> JsonObject:
        options = self.options
        if len(decision.events) > options.max_events:
            raise FoundError(
                FindingKind.TOO_MANY_EVENTS,
                f"one command produced {len(decision.events)} events, more than the limit "
                f"of {options.max_events} (--max-events)",
            )
        for what, value in (("state", decision.state), ("events", decision.events)):
            problem = json_problem(value, options.max_depth + 1, strict=True)
            if problem is not None:
                raise FoundError(
                    FindingKind.STATE_NOT_JSON,
                    f"the {what} is not plain JSON: {problem.replace('value', what, 1)}",
                )
        size = len(json.dumps(decision.state, separators=(",", ":")).encode())
        if size > options.max_state_bytes:
            raise FoundError(
                FindingKind.STATE_TOO_LARGE,
                f"the state grew to {size} bytes as JSON, past the limit of "
                f"{options.max_state_bytes} (--max-state-bytes)",
            )
        try:
            replayed = self.first.apply(json_copy(state), json_copy(decision.events))
        except (ProgramError, ProgramLimitError) as exc:
            kind = classify(exc)
            if kind is FindingKind.DECIDE_CRASHED:
                kind = FindingKind.APPLY_FAILED
            raise FoundError(kind, f"replaying the events decide produced: {exc.message}") from None
        if replayed != decision.state:
            raise FoundError(
                FindingKind.NONDETERMINISTIC,
                f"apply, replaying the events decide produced, built another state: "
                f"{quote(replayed)} instead of {quote(decision.state)}",
            )
        return decision.state


def _hypothesis_settings(options: ExploreOptions) -> settings:
    return settings(
        max_examples=options.examples,
        deadline=None,
        database=None,
        derandomize=False,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        report_multiple_bugs=False,
        print_blob=False,
    )


def _search(
    steps: _Steps,
    commands: SearchStrategy[dict[str, Any]],
    ignored: set[FindingKind],
    options: ExploreOptions,
) -> Finding | None:
    """One round: the shortest sequence found that shows one kind not in ``ignored``."""
    name = steps.type_spec.name
    best: list[Finding] = []

    def record(found: FoundError, sequence: list[dict[str, Any]]) -> bool:
        if found.kind in ignored or (best and best[-1].kind is not found.kind):
            return False
        step = len(sequence) - 1 if found.step is None else found.step
        shown = [json_copy(c) for c in sequence[: step + 1]]
        if not best or len(shown) <= len(best[-1].commands):
            message = bound_message(found.message, MAX_FINDING_MESSAGE_BYTES)
            best.append(Finding(found.kind, name, message, shown))
        return True

    def sequence_is_clean(sequence: list[dict[str, Any]]) -> None:
        try:
            steps.run(sequence)
        except FoundError as found:
            if record(found, sequence):
                raise

    test: Callable[[], None] = seed(options.seed)(
        _hypothesis_settings(options)(
            given(st.lists(commands, min_size=1, max_size=options.max_steps))(sequence_is_clean)
        )
    )
    try:
        test()
    except FoundError:
        pass
    except (HypothesisException, ExceptionGroup):
        # A flaky failure (a non-deterministic program) or no command the filters accept:
        # what was recorded stands; with nothing recorded, the caller warns.
        if not best:
            raise
    return best[-1] if best else None


def explore_type(
    type_spec: AggregateTypeManifest,
    runners: tuple[ProgramRunner, ProgramRunner],
    options: ExploreOptions,
) -> tuple[list[Finding], list[str]]:
    """Every kind of finding the search shows for one type, and warnings (a schema that
    cannot be generated from, a search that stopped). A type with neither schemas nor
    example commands has nothing to explore: no findings."""
    warnings: list[str] = []
    commands = command_strategy(type_spec, options, warnings)
    if commands is None:
        return [], warnings
    steps = _Steps(type_spec, runners, options)
    found: dict[FindingKind, Finding] = {}
    for _ in FindingKind:
        try:
            finding = _search(steps, commands, set(found), options)
        except HypothesisException as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            warnings.append(
                f"aggregate type {type_spec.name}: the search stopped: "
                f"{bound_message(first_line, 200)}"
            )
            break
        if finding is None:
            break
        found[finding.kind] = finding
    order = list(FindingKind)
    return sorted(found.values(), key=lambda f: order.index(f.kind)), warnings
