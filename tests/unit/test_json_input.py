"""``loads_json``: client JSON decoded with bounds, each refusal naming what and where."""

from __future__ import annotations

import json
import math

import pytest

from aggregate.domain.errors import InvalidArgumentError
from aggregate.domain.json_input import loads_json


def load(data: str | bytes, depth: int = 64, digits: int = 100) -> object:
    return loads_json(data, what="payload_json", max_depth=depth, max_int_digits=digits)


def refusal(data: str | bytes, depth: int = 64, digits: int = 100) -> str:
    with pytest.raises(InvalidArgumentError) as caught:
        load(data, depth, digits)
    message = caught.value.message
    assert message.startswith("payload_json ")
    assert len(message) < 200, message
    return message


def nested(depth: int, kind: str = "[") -> str:
    if kind == "[":
        return "[" * depth + "]" * depth
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


@pytest.mark.parametrize("kind", ["[", "{"])
def test_nesting_far_beyond_the_parser_is_refused_not_a_recursion_error(kind: str) -> None:
    assert "nests deeper than 64 levels" in refusal(nested(10_000, kind))
    assert "nests deeper than 64 levels" in refusal(nested(100_000, kind))


@pytest.mark.parametrize("kind", ["[", "{"])
def test_nesting_limit_is_exact(kind: str) -> None:
    assert load(nested(64, kind)) == json.loads(nested(64, kind))
    message = refusal(nested(65, kind))
    assert "nests deeper than 64 levels at $" in message
    assert "(max_json_depth)" in message
    assert load(nested(5, kind), depth=5) == json.loads(nested(5, kind))
    refusal(nested(6, kind), depth=5)


def test_depth_refusal_names_the_path() -> None:
    text = '{"type": "X", "items": [1, {"deep": ' + nested(64) + "}]}"
    assert "at $['items'][1]['deep'][0][0]" in refusal(text)


def test_wide_values_are_not_too_deep() -> None:
    text = json.dumps({"type": "X", "items": [{"a": [n]} for n in range(500)]})
    assert load(text) == json.loads(text)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('"\\ud800"', "is a string with a lone surrogate"),
        ('{"a": "ok\\udfffok"}', "in the string at $['a']"),
        ('{"a": ["x", "\\uDBFF"]}', "in the string at $['a'][1]"),
        ('{"\\ud800": 1}', "in the key $['\\ud800']"),
        ('{"a": "\\ude00\\ud83d"}', "in the string at $['a']"),  # a pair in the wrong order
    ],
)
def test_lone_surrogates_are_refused(text: str, where: str) -> None:
    message = refusal(text)
    assert "lone surrogate" in message
    assert where in message


def test_surrogate_pairs_and_escaped_backslashes_are_fine() -> None:
    assert load('{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}
    assert load('{"a": "\\\\ud800"}') == {"a": "\\ud800"}  # a backslash, then text


def test_a_raw_surrogate_in_the_text_is_refused() -> None:
    assert "lone surrogate at character 7" in refusal('{"a": "\ud800"}')


def test_integer_digits_are_bounded() -> None:
    assert load("9" * 100) == int("9" * 100)
    assert load("-" + "9" * 100) == -int("9" * 100)
    assert "integer of 101 digits" in refusal("1" * 101)
    message = refusal('{"n": ' + "7" * 4300 + "}")
    assert "integer of 4300 digits ('77777777777777777777'…(4300 chars))" in message
    assert "(max_json_int_digits)" in message
    assert "integer of 5000 digits" in refusal("5" * 5000, digits=4300)
    assert load(str(2**70 + 1)) == 2**70 + 1  # integers stay exact


@pytest.mark.parametrize("name", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_literals_are_refused(name: str) -> None:
    assert f"holds {name}, which is not a JSON number" in refusal('{"x": ' + name + "}")


@pytest.mark.parametrize("text", ["1e999", "-1e999", "1" * 400 + ".0", "1.5E+400"])
def test_numbers_that_overflow_a_float_are_refused(text: str) -> None:
    assert "too large for a 64-bit float" in refusal("[" + text + "]")


def test_finite_floats_are_kept() -> None:
    value = load("[1.5, -0.0, 1e308, 1e-999]")
    assert isinstance(value, list)
    assert value[:3] == [1.5, -0.0, 1e308]
    assert value[3] == 0.0
    assert all(math.isfinite(v) for v in value)


def test_bytes_must_be_utf8() -> None:
    assert load(b'{"a": "\xc3\xa9"}') == {"a": "é"}
    assert "is not valid UTF-8 (byte 7)" in refusal(b'{"a": "\xff"}')
    assert "is not valid UTF-8" in refusal(b'{"a": "\xed\xa0\x80"}')  # an encoded surrogate


def test_syntax_errors_say_where() -> None:
    assert "is not valid JSON: Expecting value: line 1 column 7 (char 6)" in refusal('{"a": }')
    assert "is not valid JSON" in refusal("")
    assert "is not valid JSON" in refusal("[1] [2]")


def test_the_name_of_the_input_is_the_callers() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^request body nests deeper than 2"):
        loads_json("[[[]]]", what="request body", max_depth=2, max_int_digits=10)
