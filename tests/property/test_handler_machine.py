"""The real handler vs the model, on the in-memory event store (fast, with faults)."""

from __future__ import annotations

import pytest
from hypothesis import settings

from tests.property.machine import HandlerMachine, memory_world_factory


class MemoryHandlerMachine(HandlerMachine):
    make_world = staticmethod(memory_world_factory("trio"))


TestHandlerOnMemoryStore = MemoryHandlerMachine.TestCase


class SlowMemoryHandlerMachine(HandlerMachine):
    make_world = staticmethod(memory_world_factory("trio"))


@pytest.mark.slow
def test_handler_on_memory_store_large_budget() -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        SlowMemoryHandlerMachine,
        settings=settings(settings.get_profile("slow")),
    )
