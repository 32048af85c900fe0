"""Command schemas: an optional JSON Schema per command type, checked before any program
runs (DESIGN §12).

A manifest type may give ``schemas:``, a mapping of command type to JSON Schema. Each
schema is compiled once, when the manifest is read, by fastjsonschema (it turns a schema
into Python code, so a schema is input too): it is bounded in size and nesting, a ``$ref``
must point inside the schema itself (``#...``; remote references are refused and nothing
is ever fetched), and defaults are never written into payloads. A payload that does not
match its command type's schema is refused with ``InvalidArgumentError``: the message gives
the JSON path (``$.amount``) and the rule (``minimum``), and never echoes the payload.

The schema applies to the whole payload object, its ``type`` member included; command
types with no schema are not checked here (their program decides).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import fastjsonschema

from aggregate.domain.errors import InvalidArgumentError, bound_message, quote
from aggregate.domain.json_input import loads_json

MAX_SCHEMA_BYTES = 64 * 1024
"""Largest schema of one command type, as compact JSON (UTF-8 bytes)."""
MAX_SCHEMA_DEPTH = 32
"""Deepest nesting of objects and arrays in one schema."""
MAX_SCHEMAS = 256
"""Most command types with a schema in one aggregate type."""
MAX_SCHEMA_MESSAGE_BYTES = 512
"""Longest refusal message for a payload that fails its schema."""
_MAX_PATH_CHARS = 120

Validator = Callable[[Any], Any]


class SchemaDefinitionError(ValueError):
    """Raised when a manifest's schema is not a usable JSON Schema; the message says why
    (the caller adds the file and key path)."""


class _RefuseRemote(Mapping[str, Callable[[str], Any]]):
    """fastjsonschema's ``handlers``: a handler for every URI scheme, and each refuses, so
    a remote ``$ref`` that slipped past ``_local_refs_only`` is never fetched."""

    def __contains__(self, scheme: object) -> bool:
        return True

    def __getitem__(self, scheme: str) -> Callable[[str], Any]:
        return self._refuse

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    @staticmethod
    def _refuse(uri: str) -> Any:
        raise SchemaDefinitionError(f"$ref {quote(uri)} points outside the schema")


def _local_refs_only(schema: Any) -> None:
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None and (not isinstance(ref, str) or not ref.startswith("#")):
                raise SchemaDefinitionError(
                    f"$ref {quote(ref)} is not a reference inside the schema: only '#...' "
                    "references are allowed (remote schemas are never fetched)"
                )
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def compile_schema(schema: object) -> tuple[dict[str, Any], Validator]:
    """Check and compile one command type's schema: returns it as plain JSON and its
    validator.

    Raises:
        SchemaDefinitionError: not a JSON object, larger than ``MAX_SCHEMA_BYTES`` or
            deeper than ``MAX_SCHEMA_DEPTH``, a non-local ``$ref``, or a schema
            fastjsonschema rejects.
    """
    if not isinstance(schema, dict):
        raise SchemaDefinitionError("must be a JSON Schema object (a mapping)")
    try:
        text = json.dumps(schema, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise SchemaDefinitionError(f"is not plain JSON: {exc}") from None
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise SchemaDefinitionError(f"is larger than {MAX_SCHEMA_BYTES} bytes as JSON")
    try:
        plain = loads_json(text, what="schema", max_depth=MAX_SCHEMA_DEPTH, max_int_digits=100)
    except InvalidArgumentError as exc:
        raise SchemaDefinitionError(exc.message) from None
    if plain != schema:
        raise SchemaDefinitionError("is not plain JSON (keys must be strings)")
    _local_refs_only(plain)
    try:
        validator = fastjsonschema.compile(plain, handlers=_RefuseRemote(), use_default=False)
    except SchemaDefinitionError:
        raise
    except RecursionError:
        raise SchemaDefinitionError("is not a valid JSON Schema: its $refs loop") from None
    except Exception as exc:  # fastjsonschema's, re.error, or the generated code's
        raise SchemaDefinitionError(
            f"is not a valid JSON Schema: {bound_message(str(exc), 200)}"
        ) from None
    return plain, validator


def _path(name: str | None) -> str:
    path = "$" + (name or "data").removeprefix("data")
    return path if len(path) <= _MAX_PATH_CHARS else f"{path[:_MAX_PATH_CHARS]}…"


def _problem(exc: fastjsonschema.JsonSchemaValueException) -> str:
    if exc.rule == "additionalProperties":
        return "must not contain properties other than the ones its schema names"
    message = exc.message
    name = exc.name or ""
    return message[len(name) :].strip() if message.startswith(name) else message


@dataclass(frozen=True, slots=True)
class CommandSchemas:
    """The compiled schemas of one aggregate type, by command type. Empty when the
    manifest gives none (then ``validate`` checks nothing)."""

    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    validators: dict[str, Validator] = field(default_factory=dict, compare=False, repr=False)

    def __bool__(self) -> bool:
        return bool(self.schemas)

    def validate(self, payload: Mapping[str, Any]) -> None:
        """Check ``payload`` against the schema of its ``type``, if that type has one.

        Raises:
            InvalidArgumentError: the payload does not match; names the command type, the
                JSON path and the rule, and quotes nothing of the payload but its type.
        """
        kind = payload.get("type")
        validator = self.validators.get(kind) if isinstance(kind, str) else None
        if validator is None:
            return
        try:
            validator(payload)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise InvalidArgumentError(
                bound_message(
                    f"payload_json does not match the schema of command type {quote(kind)}: "
                    f"at {_path(exc.name)}: {_problem(exc)} (rule {exc.rule or 'schema'})",
                    MAX_SCHEMA_MESSAGE_BYTES,
                )
            ) from None


def compile_command_schemas(value: object) -> CommandSchemas:
    """Compile a manifest's ``schemas:`` mapping (command type → JSON Schema).

    Raises:
        SchemaDefinitionError: not a mapping, too many entries, a command type that is not
            a non-empty string, or a bad schema; the message starts with the command type
            (``Deposit: is not a valid JSON Schema: ...``).
    """
    if not isinstance(value, dict):
        raise SchemaDefinitionError("must be a mapping of command types to JSON Schemas")
    if len(value) > MAX_SCHEMAS:
        raise SchemaDefinitionError(f"has more than {MAX_SCHEMAS} command types")
    schemas: dict[str, dict[str, Any]] = {}
    validators: dict[str, Validator] = {}
    for kind, schema in value.items():
        if not isinstance(kind, str) or not kind:
            raise SchemaDefinitionError(f"command type {quote(kind)} is not a non-empty string")
        try:
            schemas[kind], validators[kind] = compile_schema(schema)
        except SchemaDefinitionError as exc:
            raise SchemaDefinitionError(f"{kind}: {exc}") from None
    return CommandSchemas(schemas, validators)
