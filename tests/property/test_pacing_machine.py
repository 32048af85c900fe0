"""The real read pacing (``aggregate.adapters.grpc.pacing``) beside its model
(``specs.protection.PacingModel``).

Rules: calls arrive on a few connections, naming one of a few tenants (or none), refused by
a tenant's rate quota, by its in-flight quota, or admitted; commands complete on a few
``SubmitCommands`` streams, each of one tenant, the same ways (``stream_outcome``, what a
stream observes); the clock moves on. After each step, every connection's and stream's
debt, the connections' paced state and the count of calls that went into debt must be the
model's. Clock steps are multiples of 1/1024 s and ``pace + rate`` a power of two, so the
floats of the real code are exact and must agree with the model's fractions to the last
bit.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from aggregate.adapters.grpc.pacing import ReadPacing, RefusalPacer, stream_outcome
from specs.protection import PacingModel

TENANTS = ("acme", "globex", "initech")
CONNECTIONS = 3
STREAM_TENANTS = ("acme", "acme", "globex")
"""The tenants of the streams: two of acme's share its schedule with its connections."""
TICK = Fraction(1, 1024)


class PacingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ticks = 0
        self.model = PacingModel(pace=0)
        self.pacer = RefusalPacer.of(0)
        self.connections: list[ReadPacing] = []
        self.streams: list[ReadPacing] = []

    @initialize(pace=st.sampled_from([0, 1, 2, 4, 8, 16, 32]))
    def start(self, pace: int) -> None:
        self.model = PacingModel(pace=pace)
        self.pacer = RefusalPacer.of(pace)
        self.connections = [ReadPacing(self.pacer) for _ in range(CONNECTIONS)]
        self.streams = [ReadPacing(self.pacer, tenant) for tenant in STREAM_TENANTS]
        note(f"pace {pace}")

    @property
    def now(self) -> Fraction:
        return self.ticks * TICK

    @rule(ticks=st.integers(0, 3000))
    def time_passes(self, ticks: int) -> None:
        self.ticks += ticks

    @precondition(lambda self: bool(self.connections))
    @rule(
        connection=st.integers(0, CONNECTIONS - 1),
        tenant=st.sampled_from([*TENANTS, None]),
        outcome=st.sampled_from(["admitted", "rate", "in_flight"]),
        scale=st.sampled_from([1, 2, 4, 8]),
        refused_other=st.booleans(),
    )
    def a_call(
        self, connection: int, tenant: str | None, outcome: str, scale: int, refused_other: bool
    ) -> None:
        """``scale``: pace + rate as a multiple of pace (a power of two); a call naming no
        tenant (single-tenant mode) or, rarely, refused for another tenant than it names."""
        refused: str | None = None
        rate = 0
        if outcome != "admitted":
            refused = tenant or TENANTS[0]
            if refused_other:
                refused = TENANTS[(TENANTS.index(refused) + 1) % len(TENANTS)]
            rate = self.model.pace * (scale - 1) if outcome == "rate" else 0
        note(f"t={self.now} conn {connection} names {tenant} {outcome} {refused} rate {rate}")
        self.model.call(connection, self.now, tenant, refused, rate)
        self.connections[connection].observe(tenant, refused, float(rate), float(self.now))

    @precondition(lambda self: bool(self.streams))
    @rule(
        stream=st.integers(0, len(STREAM_TENANTS) - 1),
        outcome=st.sampled_from(["admitted", "rate", "in_flight"]),
        scale=st.sampled_from([1, 2, 4, 8]),
    )
    def a_stream_command(self, stream: int, outcome: str, scale: int) -> None:
        tenant = STREAM_TENANTS[stream]
        rate = self.model.pace * (scale - 1) if outcome == "rate" else 0
        note(f"t={self.now} stream {stream} of {tenant} {outcome} rate {rate}")
        refused = outcome != "admitted"
        self.model.stream_command(CONNECTIONS + stream, self.now, tenant, refused, rate)
        quota_rate = None if outcome == "admitted" else float(rate)
        stream_outcome(self.streams[stream], tenant, quota_rate, float(self.now))

    @invariant()
    def agrees_with_the_model(self) -> None:
        now = self.now
        assert self.pacer.paced == self.model.paced
        for i, conn in enumerate(self.connections):
            model = self.model.connections.get(i)
            assert conn.must_wait(float(now)) == self.model.in_debt(i, now), i
            paced = model is not None and self.model.paced_now(model, now)
            assert conn.slicing(float(now)) == paced, i
            if model is not None and model.paid_at is not None:
                assert conn.resume_at == float(model.paid_at), i
        for i, stream in enumerate(self.streams):
            reader = CONNECTIONS + i
            assert stream.must_wait(float(now)) == self.model.in_debt(reader, now), reader
            tenant = STREAM_TENANTS[i]
            waits = self.pacer.debt(tenant, float(now)) > 0
            assert waits == self.model.tenant_in_debt(tenant, now), tenant
            if stream.must_wait(float(now)):  # the tenant's debt covers the stream's own
                assert self.pacer.debt(tenant, float(now)) >= stream.resume_at - float(now)
            model = self.model.connections.get(reader)
            if model is not None and model.paid_at is not None:
                assert stream.resume_at == float(model.paid_at), reader


TestPacingMachine = PacingMachine.TestCase
TestPacingMachine.settings = settings(
    settings.default, max_examples=200, stateful_step_count=60, deadline=None
)


@pytest.mark.slow
def test_pacing_machine_long() -> None:
    run_state_machine_as_test(PacingMachine, settings=settings(settings.get_profile("slow")))
