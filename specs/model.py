"""The executable model of the command service: obviously correct, no performance tricks.

A dict of aggregates keyed by (tenant, type, id). Each aggregate keeps its state, version,
full event log and the full ordered list of command ids it applied. ``submit`` says what
must happen for a command: the result (version, events, duplicate) or the error class.
The real handler is compared against it by the property tests (tests/property/).

The invariants it embodies are written out in ``specs/INVARIANTS.md``.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from aggregate.domain.errors import (
    AggregateError,
    CommandIdTooOldError,
    CommandRejectedError,
    ExpectedVersionMismatchError,
    InvalidArgumentError,
    UnknownAggregateTypeError,
)
from aggregate.domain.ids import uuid7_timestamp_ms
from specs import boundary
from specs.bank import Rejection

Decide = Callable[[dict[str, Any], dict[str, Any]], "list[dict[str, Any]] | Rejection"]
Apply = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
Key = tuple[str, str, uuid.UUID]


@dataclass(frozen=True)
class ModelEvent:
    """An event as the model sees it: version, type and payload (ids and times differ)."""

    version: int
    event_type: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class ModelResult:
    """What a successful command must answer."""

    version: int
    events: tuple[ModelEvent, ...]
    duplicate: bool


@dataclass
class ModelAggregate:
    state: dict[str, Any]
    version: int = 0
    log: list[ModelEvent] = field(default_factory=list)
    applied: list[uuid.UUID] = field(default_factory=list)  # every command id, in order
    results: dict[uuid.UUID, ModelResult] = field(default_factory=dict)
    decided_by: dict[uuid.UUID, str] = field(default_factory=dict)  # program version


@dataclass
class ModelType:
    """A type's programs; ``version`` names them (the ``program-version`` of a message)."""

    decide: Decide
    apply: Apply
    initial_state: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    """JSON Schema per command type; checked here with the reference ``jsonschema``
    library (the service uses another validator, so the two are compared)."""

    def payload_fits(self, payload: dict[str, Any]) -> bool:
        """A command whose type has a schema must match it; other types always fit."""
        schema = self.schemas.get(payload.get("type"))  # type: ignore[arg-type]
        return schema is None or jsonschema.validators.validator_for(
            schema, default=jsonschema.Draft201909Validator
        )(schema).is_valid(payload)


class Model:
    """All tenants' aggregates. ``history_limit`` is the K of DESIGN §4.4."""

    def __init__(self, types: dict[str, ModelType], history_limit: int) -> None:
        self.types = types
        self.history_limit = history_limit
        self.aggregates: dict[Key, ModelAggregate] = {}
        self.activity: dict[str, int] = {}
        """Commands each tenant ran (the admin views' ``commands_total``, summed over the
        nodes): every command of a known type that passed the boundary, whatever its
        outcome."""

    def aggregate(self, key: Key) -> ModelAggregate:
        if key not in self.aggregates:
            self.aggregates[key] = ModelAggregate(copy.deepcopy(self.types[key[1]].initial_state))
        return self.aggregates[key]

    def remembered(self, agg: ModelAggregate) -> list[uuid.UUID]:
        """The command ids a real aggregate still remembers: the last K applied."""
        return agg.applied[-self.history_limit :]

    def horizon_ms(self, agg: ModelAggregate) -> int:
        """The largest v7 timestamp among forgotten command ids (0 if none)."""
        forgotten = agg.applied[: max(0, len(agg.applied) - self.history_limit)]
        stamps = [uuid7_timestamp_ms(c) for c in forgotten]
        return max((s for s in stamps if s is not None), default=0)

    def submit(
        self,
        key: Key,
        command_id: uuid.UUID,
        payload: dict[str, Any],
        expected_version: int | None = None,
    ) -> ModelResult | type[AggregateError]:
        """What must happen; changes the model only when the command is applied."""
        if key[1] not in self.types:
            return UnknownAggregateTypeError
        kind = self.types[key[1]]
        if not kind.payload_fits(payload):
            return InvalidArgumentError  # before anything else: nothing read or stored
        self.activity[key[0]] = self.activity.get(key[0], 0) + 1
        agg = self.aggregate(key)
        if command_id in self.remembered(agg):
            original = agg.results[command_id]
            return ModelResult(original.version, original.events, duplicate=True)
        stamp = uuid7_timestamp_ms(command_id)
        if stamp is not None and stamp <= self.horizon_ms(agg):
            return CommandIdTooOldError
        if expected_version is not None and expected_version != agg.version:
            return ExpectedVersionMismatchError
        decided = kind.decide(copy.deepcopy(agg.state), copy.deepcopy(payload))
        if isinstance(decided, Rejection):
            return CommandRejectedError
        if not decided:
            return ModelResult(agg.version, (), duplicate=False)
        if command_id in agg.results:
            # A non-v7 id the aggregate forgot: its append carries the same message id,
            # which the event store de-duplicates within its duplicate window (the tests
            # run well inside it), so the original result is the answer.
            original = agg.results[command_id]
            return ModelResult(original.version, original.events, duplicate=True)
        events = []
        for value in decided:
            agg.state = kind.apply(agg.state, value)
            agg.version += 1
            payload_only = {k: v for k, v in value.items() if k != "type"}
            events.append(ModelEvent(agg.version, value["type"], payload_only))
        agg.log.extend(events)
        agg.applied.append(command_id)
        agg.decided_by[command_id] = kind.version
        result = ModelResult(agg.version, tuple(events), duplicate=False)
        agg.results[command_id] = result
        return result

    def reload(self, name: str, programs: ModelType) -> None:
        """Serve type ``name`` with ``programs`` from the next command on (a hot reload).

        Every aggregate keeps its state: what the old ``apply`` folded is the past, and the
        new ``apply`` folds only the events after the reload. A command is decided by the
        programs serving when it is submitted, exactly one version, and a reload loses no
        command and changes no stored event.
        """
        self.types[name] = programs

    def submit_request(
        self, tenant: str, kind: str, aggregate_id: str, command_id: str, payload_json: str
    ) -> ModelResult | type[AggregateError]:
        """``submit`` for the text fields of a request: refused as a whole (nothing
        changes, no program runs) unless ``specs.boundary`` takes every field."""
        parsed = boundary.request(aggregate_id, command_id, payload_json)
        if parsed is None:
            return InvalidArgumentError
        aggregate, command, payload = parsed
        return self.submit((tenant, kind, aggregate), command, payload)

    def view(self, key: Key) -> tuple[int, dict[str, Any]] | None:
        """(version, state) of an aggregate with events, or None."""
        agg = self.aggregates.get(key)
        if agg is None or agg.version == 0:
            return None
        return agg.version, agg.state
