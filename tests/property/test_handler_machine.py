"""The real handler vs the model, on the in-memory event store (fast, with faults).

The first machine uses the model's own rules as the program, so any difference is the
handler's; the schema machine adds the bank example's command schemas (payloads that
fail them are refused before anything else, which the model checks with another JSON
Schema validator); the others run the bundled Starlark bank example with its schemas,
inline and in worker processes, so the model checks the example program and both isolation
modes too.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from tests.property.machine import HandlerMachine, memory_world_factory


class MemoryHandlerMachine(HandlerMachine):
    make_world = staticmethod(memory_world_factory("trio"))


TestHandlerOnMemoryStore = MemoryHandlerMachine.TestCase


class SchemaHandlerMachine(HandlerMachine):
    make_world = staticmethod(memory_world_factory("trio", schemas=True))


TestHandlerWithCommandSchemas = SchemaHandlerMachine.TestCase


class StarlarkInlineMachine(HandlerMachine):
    make_world = staticmethod(memory_world_factory("trio", "starlark-inline", schemas=True))


class StarlarkProcessMachine(HandlerMachine):
    make_world = staticmethod(memory_world_factory("asyncio", "starlark-process", schemas=True))


def test_starlark_bank_inline_matches_the_model() -> None:
    run_state_machine_as_test(
        StarlarkInlineMachine, settings=settings(settings.default, max_examples=40)
    )


def test_starlark_bank_in_worker_processes_matches_the_model() -> None:
    run_state_machine_as_test(
        StarlarkProcessMachine, settings=settings(settings.default, max_examples=8)
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "machine",
    [MemoryHandlerMachine, SchemaHandlerMachine, StarlarkInlineMachine, StarlarkProcessMachine],
)
def test_large_budget(machine: type[HandlerMachine]) -> None:
    run_state_machine_as_test(machine, settings=settings(settings.get_profile("slow")))
