"""Fuzz: the admin HTTP API of a real service, in raw HTTP/1.1: hostile tenant path segments
(``%2F``, bad percent-escapes, raw bytes, long ones), hostile bodies (deep nesting, invalid
UTF-8, huge integers, echo bait), protocol-level junk, and well-formed requests as control.

Every answer: the code the case deserves (never a 500), a JSON ``{"error"}`` reason for
every 4xx the application answers, short (``MAX_STATUS_MESSAGE_BYTES``), no server path;
no hostile path drains the sentinel tenant; after each class the node is up, memory
bounded, log free of errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given

from tests.integration.fuzz_admin import (
    SENTINEL,
    TOKEN,
    HttpCase,
    body_cases,
    error_reason,
    issue_body_cases,
    issue_path_cases,
    path_cases,
    protocol_cases,
    send_raw,
    valid_cases,
)
from tests.integration.fuzz_support import (
    FuzzNode,
    check_status,
    ci_budget,
    fuzz_node,
    slow_budget,
    with_examples,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from hypothesis.strategies import SearchStrategy

pytestmark = pytest.mark.integration

PATHS, BODIES, PROTOCOL, VALID = (
    "admin tenant path segments",
    "admin bodies",
    "admin HTTP protocol",
    "admin well-formed (control)",
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzNode]:
    with fuzz_node("admin", tmp_path_factory, env={"AGGREGATE_ADMIN_TOKEN": TOKEN}) as fuzzed:
        assert sentinel_accepting(fuzzed)
        yield fuzzed


def sentinel_accepting(node: FuzzNode) -> bool:
    status, view = node.service.http_call("GET", f"/admin/tenant/{SENTINEL}/status", token=TOKEN)
    assert status == 200, (status, view)
    return bool(view["accepting"])


def send(node: FuzzNode, input_class: str, case: HttpCase) -> None:
    """One request; its answer judged as one word (the code, or what is wrong with it)."""
    host = f"{node.service.http[0]}:{node.service.http[1]}"
    answer = send_raw(node.service.http, case.request_bytes(host))
    reason = error_reason(answer)
    if answer.status is None:
        seen = "no answer"
    elif not case.protocol_level and 400 <= answer.status < 500 and not reason:
        seen = f"{answer.status} without a JSON reason"
    elif input_class == PATHS and not sentinel_accepting(node):
        seen = f"{answer.status}, and the sentinel tenant {SENTINEL} was drained"
    else:
        seen = str(answer.status)
    shown = reason if reason is not None else answer.body[:200].decode("latin-1")
    check_status(input_class, case.label, seen, shown, {str(code) for code in case.allowed})


# input class -> (strategy, CI examples, slow examples, explicit examples)
CLASSES: dict[str, tuple[SearchStrategy[HttpCase], int, int, list[HttpCase]]] = {
    PATHS: (path_cases(), 40, 1200, issue_path_cases()),
    BODIES: (body_cases(), 30, 600, issue_body_cases()),
    PROTOCOL: (protocol_cases(), 15, 200, []),
    VALID: (valid_cases(), 10, 100, []),
}


def fuzz_admin(node: FuzzNode, input_class: str, budget: Callable[[Any], Any]) -> None:
    cases, _, _, examples = CLASSES[input_class]

    @budget
    @given(cases)
    def run(case: HttpCase) -> None:
        send(node, input_class, case)

    node.start_class()
    with_examples(run, examples)()
    node.check(input_class)


@pytest.mark.parametrize("input_class", list(CLASSES))
def test_admin_requests(node: FuzzNode, input_class: str) -> None:
    fuzz_admin(node, input_class, ci_budget(CLASSES[input_class][1]))


@pytest.mark.slow
@pytest.mark.parametrize("input_class", list(CLASSES))
def test_admin_requests_large_budget(node: FuzzNode, input_class: str) -> None:
    fuzz_admin(node, input_class, slow_budget(CLASSES[input_class][2]))
