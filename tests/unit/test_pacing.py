"""The read pacing's pure parts (``aggregate.adapters.grpc.pacing``); the state machine in
``tests/property/test_pacing_machine.py`` compares them with the model."""

from __future__ import annotations

from aggregate.adapters.grpc.pacing import (
    MAX_TENANTS,
    ReadPacing,
    RefusalPacer,
    tenant_header,
)


def test_a_flood_is_free_for_one_second_of_schedule_then_each_refusal_owes_its_share() -> None:
    pacer = RefusalPacer.of(4)  # rate 4: each refusal costs 1/8 s
    delays = [pacer.spend("acme", 0.0, pacer.cost(4)) for _ in range(10)]
    assert delays == [0.0] * 8 + [0.125, 0.25]
    assert pacer.paced == 2
    assert pacer.spend("acme", 10.0, pacer.cost(4)) == 0.0  # paid off long since


def test_a_connection_carrying_two_tenants_is_never_paced() -> None:
    pacer = RefusalPacer.of(1)
    conn = ReadPacing(pacer)
    conn.observe("acme", None, 0.0, 0.0)
    conn.observe("calm", None, 0.0, 0.0)
    for _ in range(50):
        conn.observe("acme", "acme", 0.0, 0.5)
    assert not conn.must_wait(0.5)
    assert pacer.paced == 0
    for _ in range(50):  # a second later, only acme: paced
        conn.observe("acme", "acme", 0.0, 1.5)
    assert conn.must_wait(1.5)


def test_under_an_in_flight_quota_only_refusals_cost() -> None:
    pacer = RefusalPacer.of(2)
    conn = ReadPacing(pacer)
    for _ in range(4):
        conn.observe("acme", "acme", 0.0, 0.0)
    assert conn.must_wait(0.0)
    assert conn.slicing(0.0)
    due = conn.resume_at
    for _ in range(100):
        conn.observe("acme", None, 0.0, 0.0)
    assert conn.resume_at == due


def test_the_budgets_kept_are_bounded() -> None:
    pacer = RefusalPacer.of(1)
    for i in range(3 * MAX_TENANTS):
        pacer.spend(f"t{i}", float(i), 1.0)
    assert len(pacer._due) <= MAX_TENANTS


def test_pacing_off_never_pauses() -> None:
    conn = ReadPacing(RefusalPacer.of(0))
    for _ in range(1000):
        conn.observe("acme", "acme", 0.0, 0.0)
    assert not conn.must_wait(0.0)


def test_the_tenant_header_is_the_first_x_tenant_id() -> None:
    assert tenant_header([(":path", "/x"), ("x-tenant-id", "a"), ("x-tenant-id", "b")]) == "a"
    assert tenant_header([(":path", "/x")]) is None
