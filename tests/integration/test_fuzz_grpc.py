"""Fuzz: SubmitCommand / GetAggregate / SubmitCommands fields and JSON payloads, sent by a
default grpcio client to a real service (``aggregate serve --example bank``).

Each input class is one test: a derandomized CI budget, and a ``-m slow`` twin with the
large one. Every answer is checked against what its input deserves (``fuzz_strategies``:
the oracle travels with the input); after each class the node must be up, its memory
bounded, its log free of errors and its stream well-formed (``FuzzNode.check``).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

import pytest
from hypothesis import given

from aggregate.gateway.v1 import aggregate_pb2 as pb
from tests.integration.fuzz_json import issue_payload_cases, payload_cases
from tests.integration.fuzz_strategies import (
    Case,
    RequestCase,
    id_cases,
    issue_request_cases,
    request_cases,
    tenant_cases,
    type_cases,
)
from tests.integration.fuzz_support import (
    BANK,
    GOOD_TENANT,
    INVALID,
    TOO_BIG,
    FuzzNode,
    SyncClient,
    check_status,
    ci_budget,
    fuzz_node,
    open_account_request,
    slow_budget,
    with_examples,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [
    pytest.mark.integration,
    # Hypothesis prints how each example was built; a 64 MB field makes that a warning about
    # the size of the printout, not about the service.
    pytest.mark.filterwarnings(
        "ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"
    ),
]

GOOD = [("x-tenant-id", GOOD_TENANT)]
FIELDS, GETS, JSON_UNARY, JSON_STREAM = (
    "protobuf fields",
    "GetAggregate fields",
    "JSON payloads",
    "JSON payloads (SubmitCommands)",
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzNode]:
    with fuzz_node("grpc-fields", tmp_path_factory) as fuzzed:
        yield fuzzed


@pytest.fixture(scope="module")
def client(node: FuzzNode) -> Iterator[SyncClient]:
    grpcio = SyncClient(node.grpc)
    yield grpcio
    grpcio.close()


# --- protobuf fields ------------------------------------------------------------------------


def submit_fields(node: FuzzNode, client: SyncClient, case: RequestCase) -> None:
    tenant = case.tenant.value
    metadata = [] if tenant is None else [("x-tenant-id", tenant)]
    answer = client.submit(case.request, metadata)
    check_status(FIELDS, case.describe(), answer.status, answer.message, case.allowed)
    if answer.status != "OK":
        return
    response, request = answer.response, case.request
    assert response.tenant_id == tenant, (case.describe(), response.tenant_id)
    if request.aggregate_id:
        # Any case is accepted; the id answered (and stored) is the same id, lower case.
        assert response.aggregate_id == request.aggregate_id.lower(), case.describe()
    if request.command_id:
        assert response.command_id == request.command_id.lower(), case.describe()
    node.remember(response.aggregate_id)


def test_protobuf_fields(node: FuzzNode, client: SyncClient) -> None:
    @ci_budget(60)
    @given(request_cases())
    def run(case: RequestCase) -> None:
        submit_fields(node, client, case)

    node.start_class()
    with_examples(run, issue_request_cases())()
    node.check(FIELDS)


@pytest.mark.slow
def test_protobuf_fields_large_budget(node: FuzzNode, client: SyncClient) -> None:
    @slow_budget(2500)
    @given(request_cases())
    def run(case: RequestCase) -> None:
        submit_fields(node, client, case)

    node.start_class()
    with_examples(run, issue_request_cases())()
    node.check(FIELDS)


def get_fields(
    node: FuzzNode, client: SyncClient, tenant: Case[str | None], kind: Case[str], agg: Case[str]
) -> None:
    metadata = [] if tenant.value is None else [("x-tenant-id", tenant.value)]
    request = pb.GetAggregateRequest(aggregate_type=kind.value, aggregate_id=agg.value)
    answer = client.get(request, metadata)
    cases = (tenant, kind, agg)
    invalid = any(c.allowed == INVALID for c in cases) or agg.value == ""
    allowed = INVALID if invalid else frozenset({"OK", "NOT_FOUND"})
    what = ", ".join(c.label for c in cases)
    check_status(GETS, what, answer.status, answer.message, allowed)


def test_get_aggregate_fields(node: FuzzNode, client: SyncClient) -> None:
    @ci_budget(30)
    @given(tenant_cases(), type_cases(), id_cases("aggregate_id"))
    def run(tenant: Case[str | None], kind: Case[str], agg: Case[str]) -> None:
        get_fields(node, client, tenant, kind, agg)

    node.start_class()
    run()
    node.check(GETS)


@pytest.mark.slow
def test_get_aggregate_fields_large_budget(node: FuzzNode, client: SyncClient) -> None:
    @slow_budget(1000)
    @given(tenant_cases(), type_cases(), id_cases("aggregate_id"))
    def run(tenant: Case[str | None], kind: Case[str], agg: Case[str]) -> None:
        get_fields(node, client, tenant, kind, agg)

    node.start_class()
    run()
    node.check(GETS)


# --- JSON payloads --------------------------------------------------------------------------


def _deposit(aggregate_id: str) -> pb.SubmitCommandRequest:
    return pb.SubmitCommandRequest(
        aggregate_type=BANK,
        aggregate_id=aggregate_id,
        command_id=str(uuid.uuid4()),
        payload_json='{"type": "Deposit", "amount": 1}',
    )


def send_payload(node: FuzzNode, client: SyncClient, case: Case[str]) -> None:
    """On a fresh account: the hostile command, then a good deposit and a read (the account
    must not be poisoned by what was accepted), then the same through SubmitCommands."""
    opened = client.submit(open_account_request("json"), GOOD)
    assert opened.status == "OK", opened
    agg = opened.response.aggregate_id
    node.remember(agg)
    hostile = pb.SubmitCommandRequest(
        aggregate_type=BANK, aggregate_id=agg, command_id=str(uuid.uuid4()), payload_json=case.value
    )
    answer = client.submit(hostile, GOOD)
    check_status(JSON_UNARY, case.label, answer.status, answer.message, case.allowed)

    after = client.submit(_deposit(agg), GOOD)
    check_status(JSON_UNARY, f"a deposit after {case.label}", after.status, after.message, {"OK"})
    view = client.get(pb.GetAggregateRequest(aggregate_type=BANK, aggregate_id=agg), GOOD)
    check_status(JSON_UNARY, f"a read after {case.label}", view.status, view.message, {"OK"})
    assert isinstance(json.loads(view.response.state_json), dict)

    hostile.command_id = str(uuid.uuid4())
    stream, results = client.submit_many([hostile, _deposit(agg)], GOOD)
    if stream.status != "OK":
        # Only a message over the transport's limit may end the whole stream.
        check_status(
            JSON_STREAM,
            case.label,
            stream.status,
            stream.message,
            {"OK"} | (case.allowed & TOO_BIG),
            names_limit=True,
        )
        return
    assert len(results) == 2, (case.label, results)
    first, second = results
    code = "OK" if first.WhichOneof("result") == "response" else first.error.code
    check_status(JSON_STREAM, case.label, code, first.error.message, case.allowed)
    assert second.WhichOneof("result") == "response", (case.label, second)


def test_json_payloads(node: FuzzNode, client: SyncClient) -> None:
    @ci_budget(30)
    @given(payload_cases())
    def run(case: Case[str]) -> None:
        send_payload(node, client, case)

    node.start_class()
    with_examples(run, issue_payload_cases())()
    node.check(JSON_UNARY)


@pytest.mark.slow
def test_json_payloads_large_budget(node: FuzzNode, client: SyncClient) -> None:
    @slow_budget(600)
    @given(payload_cases())
    def run(case: Case[str]) -> None:
        send_payload(node, client, case)

    node.start_class()
    with_examples(run, issue_payload_cases())()
    node.check(JSON_UNARY)


# --- oversized requests ---------------------------------------------------------------------

HUGE = 64 * 1024 * 1024


def _huge(field: str) -> pb.SubmitCommandRequest:
    request = open_account_request("huge")
    if field == "metadata":
        request.metadata["blob"] = "m" * HUGE
    elif field == "metadata entries":
        request.metadata.update({f"k{i:07d}": "v" * 2040 for i in range(HUGE // 2048)})
    elif field == "payload_json":
        request.payload_json = json.dumps({"type": "OpenAccount", "owner": "o" * HUGE})
    else:
        request.aggregate_type = "t" * HUGE
    return request


@pytest.mark.parametrize(
    "field", ["metadata", "metadata entries", "payload_json", "aggregate_type"]
)
def test_oversized_requests_are_refused_and_memory_stays_bounded(
    node: FuzzNode, client: SyncClient, field: str
) -> None:
    """64 MiB in one field: RESOURCE_EXHAUSTED naming the limit, refused before the
    message is buffered (memory bounded, checked after each), unary and streamed."""
    node.start_class()
    what = f"64 MiB {field}"
    request = _huge(field)
    answer = client.submit(request, GOOD)
    check_status(
        "oversized requests", what, answer.status, answer.message, TOO_BIG, names_limit=True
    )
    stream, results = client.submit_many([request, open_account_request()], GOOD)
    if stream.status == "OK":
        assert results, what
        first = results[0]
        code = "OK" if first.WhichOneof("result") == "response" else first.error.code
        check_status("oversized requests", f"{what} streamed", code, first.error.message, TOO_BIG)
    else:
        check_status(
            "oversized requests",
            f"{what} streamed",
            stream.status,
            stream.message,
            TOO_BIG,
            names_limit=True,
        )
    del request
    good = client.submit(open_account_request(), GOOD)
    check_status("oversized requests", f"a good call after {what}", good.status, "", {"OK"})
    node.remember(good.response.aggregate_id)
    node.check(f"oversized requests ({field})")
