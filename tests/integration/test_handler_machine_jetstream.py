"""The handler-vs-model state machine on a real JetStream (DESIGN §4), two handler
instances writing the same tenants (a placement flip), bounded budget in CI."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import anyio.from_thread
import nats
import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from aggregate.adapters.jetstream import JetStreamEventStore, StreamPolicy, ensure_stream
from aggregate.adapters.jetstream.stream_reader import JetStreamStreamReader
from aggregate.adapters.nats_server import NatsServerProcess
from tests.property.machine import HandlerMachine, World

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration
_runs = itertools.count()


def jetstream_world_factory(url: str) -> Any:
    def make() -> World:
        cm = anyio.from_thread.start_blocking_portal("asyncio")
        portal = cm.__enter__()

        async def connect() -> Any:
            nc = await nats.connect(url, connect_timeout=5)
            await ensure_stream(nc.jetstream(), StreamPolicy(name="MACHINE_EVENTS"))
            return nc

        nc = portal.call(connect)
        store = JetStreamEventStore(nc, stream="MACHINE_EVENTS", request_timeout_s=5)
        reader = JetStreamStreamReader(nc, stream="MACHINE_EVENTS", request_timeout_s=5)
        world = World(portal=portal, store=store, tenant_prefix=f"run{next(_runs)}_", reader=reader)

        def close() -> None:
            try:
                portal.call(reader.aclose)
                portal.call(store.aclose)
                portal.call(nc.close)
            finally:
                cm.__exit__(None, None, None)

        world.close = close  # type: ignore[method-assign]
        return world

    return make


def run_machine(url: str, profile: settings) -> None:
    class JetStreamHandlerMachine(HandlerMachine):
        make_world = staticmethod(jetstream_world_factory(url))

    run_state_machine_as_test(JetStreamHandlerMachine, settings=profile)


@pytest.fixture(scope="module")
def machine_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServerProcess]:
    """A server of its own: the machine's stream covers every tenant subject, which would
    overlap the streams other tests create on the shared server."""
    server = NatsServerProcess(store_dir=tmp_path_factory.mktemp("machine-nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_handler_on_jetstream_matches_the_model(machine_nats: NatsServerProcess) -> None:
    run_machine(
        machine_nats.url,
        settings(settings.default, max_examples=12, stateful_step_count=20),
    )


@pytest.mark.slow
def test_handler_on_jetstream_matches_the_model_large_budget(
    machine_nats: NatsServerProcess,
) -> None:
    run_machine(machine_nats.url, settings(settings.get_profile("slow"), max_examples=150))
