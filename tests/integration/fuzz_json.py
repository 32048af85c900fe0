"""Hypothesis strategies of the fuzz suite for JSON payloads: fragments of JSON (and of
not-quite-JSON) spliced into bank commands, each judged: refused at the boundary
(INVALID_ARGUMENT, before any program runs), well-formed, or left to the server's limits.
"""

from __future__ import annotations

import functools
import json
import string
from typing import Any

import jsonschema
from hypothesis import strategies as st

from aggregate.config import example_manifest_path, load_manifest
from tests.integration.fuzz_strategies import Case, case_of
from tests.integration.fuzz_support import BUSINESS, INVALID, TOO_BIG

# --- JSON payloads --------------------------------------------------------------------------

FINE_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FINE_JSON_TEXT = st.builds(
    lambda v, ascii_only: json.dumps(v, ensure_ascii=ascii_only), FINE_JSON, st.booleans()
)

_SYNTAX_ERRORS = [
    "",
    " ",
    "{",
    "[1,]",
    "{'a': 1}",
    "tru",
    "01",
    "1.",
    ".5",
    "+1",
    "0x10",
    '"\\x41"',
    '"\x01"',
    '"\\u12"',
    "[1 2]",
    '{"a" 1}',
    "/* c */ 1",
    "1 // c",
    "\ufeff1",
    "undefined",
]
_NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400", "2e308"]
_LONE_SURROGATES = ["\\ud800", "\\udbff", "\\udc00", "\\udfff", "\\ud83d"]


def _nested(depth: int, kind: str) -> str:
    if kind == "array":
        return "[" * depth + "1" + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def _digits(count: int, first: str) -> str:
    return first + "7" * (count - 1)


def fragment_cases() -> st.SearchStrategy[Case[str]]:
    """The text of one JSON value to splice into a command, judged: ``OK`` in ``allowed``
    means a well-formed value; INVALID alone means the payload must be refused at the
    boundary, before any program runs; both mean the server's limit decides."""
    fine, bad, edge = BUSINESS, INVALID, BUSINESS | INVALID
    return st.one_of(
        FINE_JSON_TEXT.map(lambda t: case_of("json value", t, fine)),
        st.builds(
            lambda d, k: case_of(f"{k} nested {d} deep", _nested(d, k), fine),
            st.integers(1, 40),
            st.sampled_from(["array", "object"]),
        ),
        st.builds(
            lambda d, k: case_of(f"{k} nested {d} deep", _nested(d, k), bad),
            st.integers(70, 300) | st.sampled_from([1_000, 10_000, 50_000]),
            st.sampled_from(["array", "object"]),
        ),
        st.builds(
            lambda s, a, b: case_of(f"lone surrogate {s}", f'"{a}{s}{b}"', bad),
            st.sampled_from(_LONE_SURROGATES),
            st.text(string.ascii_letters, max_size=4),
            st.text(string.ascii_letters, max_size=4),
        ),
        st.just(case_of("surrogate pair", '"\\ud83d\\ude00"', fine)),
        st.sampled_from(_NON_FINITE).map(lambda t: case_of(f"non-finite {t}", t, bad)),
        st.builds(
            lambda n, sign: case_of(f"{n}-digit integer", sign + _digits(n, "1"), fine),
            st.integers(1, 15),
            st.sampled_from(["", "-"]),
        ),
        st.builds(
            lambda n, first: case_of(f"{n}-digit integer", _digits(n, first), edge),
            st.integers(16, 4300) | st.sampled_from([19, 20, 4299, 4300]),
            st.sampled_from(["1", "9"]),
        ),
        st.just(case_of("4300 nines", "9" * 4300, edge)),
        st.builds(
            lambda n: case_of(f"{n}-digit integer", _digits(n, "3"), bad),
            st.integers(4301, 6000) | st.sampled_from([4301, 10_000, 100_000]),
        ),
        st.sampled_from(_SYNTAX_ERRORS).map(lambda t: case_of(f"not JSON {t[:12]!r}", t, bad)),
    )


def placed(fragment: Case[str], where: str) -> Case[str]:
    """A command with ``fragment`` spliced in as the owner, amount, an extra field or type."""
    text = {
        "owner": '{"type": "OpenAccount", "owner": %s}',
        "amount": '{"type": "Deposit", "amount": %s}',
        "memo": '{"type": "Deposit", "amount": 1, "memo": %s}',
        "type": '{"type": %s, "amount": 1}',
    }[where] % fragment.value
    allowed = fragment.allowed
    if "OK" in allowed and where == "type":
        allowed = BUSINESS | INVALID  # a non-string type is invalid, a string one rejected
    elif allowed == BUSINESS and where in ("owner", "amount"):
        # A well-formed value meets the bank example's command schema, or is refused by it.
        allowed = BUSINESS if fits_bank_schema(json.loads(text)) else INVALID
    return case_of(f"{fragment.label} as {where}", text, allowed)


@functools.cache
def _bank_schemas() -> dict[str, Any]:
    (spec,) = load_manifest(example_manifest_path("bank")).types.values()
    return dict(spec.schemas.schemas)


def fits_bank_schema(payload: dict[str, Any]) -> bool:
    """Whether ``payload`` matches the bank example's schema of its command type, checked
    with the reference ``jsonschema`` library (the service uses another validator)."""
    schema = _bank_schemas().get(payload["type"])
    return schema is None or jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft201909Validator
    )(schema).is_valid(payload)


def payload_cases() -> st.SearchStrategy[Case[str]]:
    """A whole ``payload_json`` for an opened bank account, with at most one hostile part:
    a spliced fragment (as the owner, the amount, or an extra field), a hostile ``type``,
    or a top level that is not a command object."""

    top_level = st.sampled_from(
        [
            "[]",
            '"Deposit"',
            "1",
            "null",
            "{}",
            '{"type": ""}',
            '{"type": 1}',
            '{"amount": 1}',
            '{"type": "Deposit", "amount": 1} x',
            '{"type": "Deposit"}{}',
            "\ufeff{}",
        ]
    ).map(lambda t: case_of(f"top level {t[:16]!r}", t, INVALID))
    long_type = st.sampled_from([10_000, 200_000]).map(
        lambda n: case_of(f"{n}-char command type", json.dumps({"type": "T" * n}), BUSINESS)
    )
    return st.one_of(
        st.builds(placed, fragment_cases(), st.sampled_from(["owner", "amount", "memo", "type"])),
        top_level,
        long_type,
    )


# --- the triggers the issue reports, always run (explicit examples) --------------------------


def issue_payload_cases() -> list[Case[str]]:
    """Deep nesting, a lone surrogate, 4300-digit integers (one that overflows the limit
    of int-to-text conversion on the next deposit), NaN, 1e999, a huge command type."""
    fine_edge = BUSINESS | INVALID
    return [
        placed(case_of("array nested 10000 deep", _nested(10_000, "array"), INVALID), "memo"),
        placed(case_of("lone surrogate \\ud800", '"\\ud800"', INVALID), "owner"),
        placed(case_of("4300 nines", "9" * 4300, fine_edge), "amount"),
        placed(case_of("4300-digit integer", "1" + "0" * 4299, fine_edge), "amount"),
        placed(case_of("4301-digit integer", "1" + "0" * 4300, INVALID), "amount"),
        placed(case_of("non-finite NaN", "NaN", INVALID), "memo"),
        placed(case_of("non-finite 1e999", "1e999", INVALID), "memo"),
        case_of("2000000-char command type", json.dumps({"type": "T" * 2_000_000}), TOO_BIG),
        case_of("100000-char command type", json.dumps({"type": "T" * 100_000}), BUSINESS),
    ]
