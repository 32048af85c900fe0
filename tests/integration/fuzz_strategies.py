"""Hypothesis strategies of the fuzz suite for what goes inside a gRPC request: ids, tenant
and type tokens, ``SubmitCommandRequest`` fields (JSON payloads: ``fuzz_json``).

Every strategy draws a ``Case``: the input, a short label for messages, and the statuses
that input deserves (the oracle travels with the input, so a test never re-derives it).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from hypothesis import strategies as st

from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.fuzz_support import (
    BANK,
    BUSINESS,
    INVALID,
    TOO_BIG,
    is_canonical_id,
    is_valid_token,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Case(Generic[T]):
    """An input, what it is (for messages), and the statuses it deserves."""

    label: str
    value: T
    allowed: frozenset[str]

    @property
    def bad(self) -> bool:
        return "OK" not in self.allowed


def case_of(label: str, value: T, allowed: frozenset[str]) -> Case[T]:
    return Case(label, value, allowed)


# --- ids ------------------------------------------------------------------------------------


def dashed(hex32: str) -> str:
    return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"


_ARABIC_INDIC = str.maketrans("0123456789", "".join(chr(0x0660 + d) for d in range(10)))
_FULLWIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))

NON_CANONICAL_FORMS = {
    # Each is a text that Python's uuid.UUID() turns into *some* UUID; none is the
    # canonical 8-4-4-4-12 form, so each must be refused rather than rewritten.
    "leading space": lambda h: " " + h[1:],
    "trailing newline": lambda h: h[1:] + "\n",
    "0x prefix": lambda h: "0x" + h[2:],
    "plus sign": lambda h: "+" + h[1:],
    "underscore": lambda h: h[:4] + "_" + h[5:],
    "braces": lambda h: "{" + dashed(h) + "}",
    "urn:uuid: prefix": lambda h: "urn:uuid:" + dashed(h),
    "uuid: prefix": lambda h: "uuid:" + dashed(h),
    "undashed hex": lambda h: h,
    "misplaced dashes": lambda h: "-".join((h[:4], h[4:12], h[12:20], h[20:28], h[28:])),
    "one dash": lambda h: h[:8] + "-" + h[8:],
    "arabic-indic digits": lambda h: dashed(h).translate(_ARABIC_INDIC),
    "32 arabic-indic digits": lambda h: (
        "".join(c for c in h if c.isdigit()).ljust(32, "1").translate(_ARABIC_INDIC)
    ),
    "fullwidth digits": lambda h: dashed(h).translate(_FULLWIDTH),
    "surrounded by spaces": lambda h: f" {dashed(h)} ",
    "one digit too many": lambda h: dashed(h) + "0",
    "one digit short": lambda h: dashed(h)[:-1],
    "not hex": lambda h: dashed(h)[:-1] + "g",
}


def _hex32() -> st.SearchStrategy[str]:
    return st.uuids(version=4).map(lambda u: u.hex)


def canonical_ids() -> st.SearchStrategy[str]:
    """Canonical UUID text: lower, upper or mixed case (RFC 9562: case-insensitive)."""
    return st.builds(
        lambda h, case: {
            "lower": dashed(h),
            "upper": dashed(h).upper(),
            "mixed": dashed(h[:16].upper() + h[16:]),
        }[case],
        _hex32(),
        st.sampled_from(["lower", "upper", "mixed"]),
    )


def judge_id(what: str, text: str, label: str) -> Case[str]:
    """An id judged: canonical (any case) or empty (the server makes one) is accepted."""
    ok = text == "" or is_canonical_id(text)
    return case_of(f"{what} {label}", text, BUSINESS if ok else INVALID)


def id_cases(what: str) -> st.SearchStrategy[Case[str]]:
    """An aggregate or command id: empty (the server makes one), canonical, one of the
    non-canonical forms, or any text."""

    def judged(text: str, label: str) -> Case[str]:
        return judge_id(what, text, label)

    forms = st.builds(
        lambda name, h: judged(NON_CANONICAL_FORMS[name](h), name),
        st.sampled_from(sorted(NON_CANONICAL_FORMS)),
        _hex32(),
    )
    return st.one_of(
        canonical_ids().map(lambda t: judged(t, "canonical")),
        st.just(judged("", "empty")),
        forms,
        st.text(max_size=40).map(lambda t: judged(t, "text")),
        st.sampled_from([10_000, 100_000]).map(lambda n: judged("a" * n, f"{n} hex chars")),
    )


# --- tokens ---------------------------------------------------------------------------------

_PRINTABLE = "".join(c for c in string.printable if c not in string.whitespace)
VALID_TOKENS = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


def judge_tenant(value: str | None, label: str) -> Case[str | None]:
    ok = value is not None and is_valid_token(value)
    return case_of(f"tenant {label}", value, BUSINESS if ok else INVALID)


def judge_type(value: str, label: str) -> Case[str]:
    return case_of(f"type {label}", value, BUSINESS if value == BANK else INVALID)


def tenant_cases() -> st.SearchStrategy[Case[str | None]]:
    """The ``x-tenant-id`` metadata as grpcio can send it (printable ASCII): a valid token,
    a missing or empty header (this multi-tenant server has no default tenant), or a value
    that is not a token; long ones included (a 10k tenant must be refused, not echoed)."""
    judged = judge_tenant
    return st.one_of(
        st.sampled_from(["fuzz-a", "fuzz_b", "F"]).map(lambda t: judged(t, "pool")),
        VALID_TOKENS.map(lambda t: judged(t, "token")),
        st.just(judged(None, "missing")),
        st.just(judged("", "empty")),
        st.text(_PRINTABLE, min_size=1, max_size=80).map(lambda t: judged(t, "printable")),
        st.sampled_from([65, 1_000, 10_000]).map(lambda n: judged("t" * n, f"{n} chars")),
    )


def type_cases() -> st.SearchStrategy[Case[str]]:
    """``aggregate_type``: the configured one (mostly), an unknown token, or not a token."""
    judged = judge_type
    return st.one_of(
        st.just(judged(BANK, "configured")),
        st.sampled_from(["Bank-Account", "bank_account", "bank-account-", "x"]).map(
            lambda t: judged(t, "unknown")
        ),
        VALID_TOKENS.map(lambda t: judged(t, "token")),
        st.text(max_size=70).map(lambda t: judged(t, "text")),
        st.sampled_from([65, 10_000, 100_000]).map(lambda n: judged("b" * n, f"{n} chars")),
    )


def map_cases() -> st.SearchStrategy[Case[dict[str, str]]]:
    """The ``metadata`` map: small maps of any text (fine), or big ones (at most a few
    hundred KiB here: the oversized-request test sends the huge ones), which a server that
    bounds entries may refuse."""
    edge = BUSINESS | TOO_BIG | INVALID
    return st.one_of(
        st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=6).map(
            lambda m: case_of("small metadata map", m, BUSINESS | INVALID)
        ),
        st.sampled_from([1_000, 20_000]).map(
            lambda n: case_of(
                f"metadata map of {n} entries", {f"k{i}": "v" for i in range(n)}, edge
            )
        ),
        st.sampled_from([10_000, 300_000]).map(
            lambda n: case_of(f"metadata value of {n} chars", {"k": "v" * n}, edge)
        ),
    )


# --- whole requests -------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestCase:
    """A ``SubmitCommandRequest`` and its ``x-tenant-id``, each field judged."""

    tenant: Case[str | None]
    fields: tuple[Case[Any], ...]
    request: pb.SubmitCommandRequest

    @property
    def allowed(self) -> frozenset[str]:
        """INVALID_ARGUMENT when any field is invalid; else what the fields allow."""
        cases = (self.tenant, *self.fields)
        if any(c.allowed == INVALID for c in cases):
            # A request with several faults gets the first one the server finds: a field over
            # a size limit may be reported before a malformed one.
            over_limit = any(
                len(str(c.value)) > 65_536 or c.allowed & TOO_BIG == TOO_BIG for c in cases
            )
            return INVALID | (TOO_BIG if over_limit else frozenset())
        allowed = BUSINESS
        for c in cases:
            allowed = allowed | (c.allowed - BUSINESS)
        return allowed

    def describe(self) -> str:
        hostile = [c.label for c in (self.tenant, *self.fields) if c.allowed != BUSINESS]
        return ", ".join(hostile) or "well-formed"


def make_request(
    tenant: Case[str | None],
    kind: Case[str],
    aggregate_id: Case[str],
    command_id: Case[str],
    metadata: Case[dict[str, str]],
    payload: str,
    expected_version: int | None = None,
) -> RequestCase:
    request = pb.SubmitCommandRequest(
        command_id=command_id.value,
        aggregate_type=kind.value,
        aggregate_id=aggregate_id.value,
        payload_json=payload,
        metadata=metadata.value,
    )
    if expected_version is not None:
        request.expected_version = expected_version
    return RequestCase(tenant, (kind, aggregate_id, command_id, metadata), request)


@st.composite
def request_cases(draw: st.DrawFn) -> RequestCase:
    """A request with its fields drawn from the cases above; the payload is a well-formed
    bank command (the JSON strategies have a class of their own)."""
    owner = draw(st.text(min_size=1, max_size=30))
    return make_request(
        draw(tenant_cases()),
        draw(type_cases()),
        draw(id_cases("aggregate_id")),
        draw(id_cases("command_id")),
        draw(map_cases()),
        draw(
            st.sampled_from(
                [
                    json.dumps({"type": "OpenAccount", "owner": owner}),
                    json.dumps({"type": "Deposit", "amount": 5}),
                ]
            )
        ),
        draw(st.none() | st.integers(0, 2**64 - 1)),
    )


# --- the triggers the issue reports, always run (explicit examples) --------------------------

_NO_MAP: Case[dict[str, str]] = Case("no metadata map", {}, BUSINESS)
ISSUE_IDS = {
    "leading space": " " + "2" * 31,
    "0x prefix": "0x" + "3" * 30,
    "plus sign": "+" + "1" * 31,
    "32 arabic-indic digits": chr(0x0661) * 32,
    "uuid: prefix": "uuid:" + dashed("4" * 32),
    "braces": "{" + dashed("5" * 32) + "}",
    "urn:uuid: prefix": "urn:uuid:" + dashed("6" * 32),
    "undashed hex": "7" * 32,
}


def issue_request_cases() -> list[RequestCase]:
    """Non-canonical ids (as aggregate and as command id) and 10k-character tokens."""
    open_account = json.dumps({"type": "OpenAccount", "owner": "issue"})
    good_tenant = judge_tenant("fuzz-a", "pool")
    bank = judge_type(BANK, "configured")
    fresh = judge_id("command_id", "", "empty")
    cases = []
    for label, text in ISSUE_IDS.items():
        as_aggregate = judge_id("aggregate_id", text, label)
        cases.append(make_request(good_tenant, bank, as_aggregate, fresh, _NO_MAP, open_account))
        as_command = judge_id("command_id", text, label)
        none = judge_id("aggregate_id", "", "empty")
        cases.append(make_request(good_tenant, bank, none, as_command, _NO_MAP, open_account))
    empty = judge_id("aggregate_id", "", "empty")
    long_id = judge_id("aggregate_id", "a" * 10_000, "10000 hex chars")
    cases += [
        make_request(
            judge_tenant("t" * 10_000, "10000 chars"), bank, empty, fresh, _NO_MAP, open_account
        ),
        make_request(
            good_tenant,
            judge_type("b" * 10_000, "10000 chars"),
            empty,
            fresh,
            _NO_MAP,
            open_account,
        ),
        make_request(good_tenant, bank, long_id, fresh, _NO_MAP, open_account),
    ]
    return cases
