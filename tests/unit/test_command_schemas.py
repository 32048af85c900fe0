"""Command schemas: compiled from the manifest, bounded, local references only, and a
payload that fails its schema is refused before any program runs, nothing stored."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from aggregate.application.handler import CommandHandler
from aggregate.config import example_manifest_path, load_manifest
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import Command
from aggregate.domain.errors import ConfigError, InvalidArgumentError
from aggregate.domain.ids import AggregateKey
from aggregate.domain.manifest import Isolation
from aggregate.domain.schemas import (
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_MESSAGE_BYTES,
    CommandSchemas,
    SchemaDefinitionError,
    compile_command_schemas,
)
from aggregate.programs.base import AggregateTypeSpec
from aggregate.programs.registry import build_specs
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram, StaticTypes
from specs import bank

DEPOSIT = {
    "type": "object",
    "required": ["amount"],
    "properties": {"amount": {"type": "integer", "minimum": 1}},
}


def schemas(**by_type: Any) -> CommandSchemas:
    return compile_command_schemas(by_type)


@pytest.mark.parametrize(
    ("payload", "path", "rule"),
    [
        ({"type": "Deposit", "amount": 0}, "$.amount", "minimum"),
        ({"type": "Deposit", "amount": "7"}, "$.amount", "type"),
        ({"type": "Deposit", "amount": True}, "$.amount", "type"),
        ({"type": "Deposit", "amount": 2.5}, "$.amount", "type"),
        ({"type": "Deposit"}, "$", "required"),
    ],
)
def test_a_payload_failing_its_schema_names_path_and_rule(
    payload: dict[str, Any], path: str, rule: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        schemas(Deposit=DEPOSIT).validate(payload)
    message = caught.value.message
    assert message.startswith("payload_json does not match the schema of command type 'Deposit'")
    assert f"at {path}:" in message
    assert message.endswith(f"(rule {rule})")


def test_matching_payloads_and_types_without_a_schema_pass() -> None:
    checked = schemas(Deposit=DEPOSIT)
    checked.validate({"type": "Deposit", "amount": 5, "note": "extra fields are allowed"})
    checked.validate({"type": "Close", "anything": [1, 2]})
    assert not CommandSchemas()


def test_validation_never_writes_defaults_into_the_payload() -> None:
    schema = {"type": "object", "properties": {"amount": {"type": "integer", "default": 1}}}
    payload = {"type": "Deposit"}
    schemas(Deposit=schema).validate(payload)
    assert payload == {"type": "Deposit"}


def test_refusals_never_echo_the_payload() -> None:
    closed = {"type": "object", "properties": {"type": {}}, "additionalProperties": False}
    secret = "k" * 10_000
    with pytest.raises(InvalidArgumentError) as caught:
        schemas(Deposit=closed).validate({"type": "Deposit", secret: 1})
    assert "kkkk" not in caught.value.message
    assert "(rule additionalProperties)" in caught.value.message
    deep = {"type": "object", "additionalProperties": {"type": "integer"}}
    with pytest.raises(InvalidArgumentError) as caught:
        schemas(Deposit=deep).validate({"type": "Deposit", "type2": 1, secret: "x"})
    assert len(caught.value.message.encode()) <= MAX_SCHEMA_MESSAGE_BYTES
    assert secret not in caught.value.message


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"$ref": "https://example.com/schema.json"}, "not a reference inside the schema"),
        ({"properties": {"a": {"$ref": "file:///etc/passwd"}}}, "not a reference inside"),
        ({"$id": "http://127.0.0.1:9/", "$ref": "other.json"}, "not a reference inside"),
        ({"type": "nonsense"}, "not a valid JSON Schema"),
        ({"pattern": "(unclosed"}, "not a valid JSON Schema"),
        ({"minimum": "one"}, "not a valid JSON Schema"),
        ("a string", "must be a JSON Schema object"),
        ({"enum": ["x" * MAX_SCHEMA_BYTES]}, f"larger than {MAX_SCHEMA_BYTES} bytes"),
        (json.loads("[" * 40 + "]" * 40) and {"items": json.loads("[" * 40 + "]" * 40)}, "deep"),
        ({"minimum": float("nan")}, "not plain JSON"),
    ],
)
def test_bad_schemas_are_refused(schema: Any, problem: str) -> None:
    with pytest.raises(SchemaDefinitionError, match=r"^Deposit: ") as caught:
        compile_command_schemas({"Deposit": schema})
    assert problem in str(caught.value)


def test_a_local_ref_is_followed() -> None:
    schema = {
        "definitions": {"positive": {"type": "integer", "minimum": 1}},
        "type": "object",
        "properties": {"amount": {"$ref": "#/definitions/positive"}},
    }
    checked = schemas(Deposit=schema)
    checked.validate({"type": "Deposit", "amount": 3})
    with pytest.raises(InvalidArgumentError, match=r"at \$\.amount: .*\(rule minimum\)"):
        checked.validate({"type": "Deposit", "amount": 0})


def manifest(tmp_path: Path, type_body: str) -> Path:
    (tmp_path / "p.star").write_text(
        "def decide(state, command):\n    return []\n\ndef apply(state, event):\n    return state\n"
    )
    path = tmp_path / "m.yaml"
    path.write_text(
        "aggregate_types:\n  thing:\n    decide: p.star\n    apply: p.star\n" + type_body
    )
    return path


def test_a_bad_schema_in_a_manifest_names_type_and_command_type(tmp_path: Path) -> None:
    path = manifest(tmp_path, "    schemas:\n      Deposit: {type: nonsense}\n")
    with pytest.raises(ConfigError, match=r"key aggregate_types\.thing\.schemas\.Deposit: is not"):
        load_manifest(path)


def test_a_remote_ref_in_a_manifest_is_a_config_error(tmp_path: Path) -> None:
    path = manifest(tmp_path, "    schemas:\n      Deposit: {$ref: 'http://127.0.0.1:9/x'}\n")
    with pytest.raises(ConfigError, match=r"schemas\.Deposit: \$ref .* not a reference inside"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("    schemas: [1]\n", r"schemas: must be a mapping"),
        ("    examples: {a: 1}\n", r"examples: must be a list"),
        ("    examples: [{amount: 1}]\n", r'examples\[0\]: must have a non-empty string "type"'),
        ("    examples: [3]\n", r"examples\[0\]: must be a JSON object"),
        (
            "    schemas:\n      Deposit: {required: [amount]}\n    examples: [{type: Deposit}]\n",
            r"examples\[0\]: payload_json does not match .* \(rule required\)",
        ),
    ],
)
def test_bad_schemas_or_examples_sections(tmp_path: Path, body: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_manifest(manifest(tmp_path, body))


@pytest.mark.parametrize("name", ["bank", "billing"])
def test_the_examples_ship_schemas_and_example_commands(name: str) -> None:
    loaded = load_manifest(example_manifest_path(name))
    (spec,) = loaded.types.values()
    assert spec.schemas
    assert spec.examples
    inline = dataclasses.replace(spec, isolation=Isolation.INLINE)
    (built,) = build_specs(dataclasses.replace(loaded, types={spec.name: inline})).values()
    assert built.schemas is spec.schemas


def test_the_handler_refuses_a_schema_invalid_payload_before_any_program_runs() -> None:
    ran: list[dict[str, Any]] = []

    def decide(state: dict[str, Any], command: dict[str, Any]) -> Any:
        ran.append(command)
        return bank.decide(state, command)

    store = InMemoryEventStore()
    spec = AggregateTypeSpec(
        "bank-account",
        FunctionProgram("bank-account", decide, bank.apply),
        schemas=load_manifest(example_manifest_path("bank")).types["bank-account"].schemas,
    )
    handler = CommandHandler(store=store, types=StaticTypes({"bank-account": spec}))
    key = AggregateKey("acme", "bank-account", uuid.uuid4())

    async def submit(payload: dict[str, Any]) -> object:
        command = Command(key, uuid.uuid4(), payload, RequestContext.new())
        try:
            return await handler.handle(command)
        except InvalidArgumentError as exc:
            return exc

    async def main() -> tuple[object, object, list[Any]]:
        refused = await submit({"type": "OpenAccount", "owner": ""})
        opened = await submit({"type": "OpenAccount", "owner": "ada"})
        return refused, opened, list(await store.read(key))

    refused, _, stored = trio.run(main)
    assert isinstance(refused, InvalidArgumentError)
    assert "at $.owner:" in refused.message
    assert [c["owner"] for c in ran] == ["ada"]
    assert len(stored) == 1
