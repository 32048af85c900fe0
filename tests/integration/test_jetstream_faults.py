"""Fault injection on the JetStream event store: SIGKILL of a single node, and the loss of
an R3 stream's leader, while concurrent writers append.

Each writer owns one aggregate and appends like the command handler does: on
``BackendUnavailableError`` or a conflict it reads the history back and, if its command is
not there, retries with the same command id and the same expected sequence (so at most one
copy can ever land). Afterwards every acknowledged append must be in the stream exactly
once, in order, with contiguous versions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import nats.errors
import nats.js.errors
import pytest

from aggregate.adapters.jetstream import JetStreamEventStore, StreamPolicy, ensure_stream
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import CommandRecord, StoredRecord, events_from_decision
from aggregate.domain.errors import (
    BackendUnavailableError,
    DuplicateAppendError,
    VersionConflictError,
)
from aggregate.domain.ids import AggregateKey, uuid7

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aggregate.adapters.nats_server import NatsCluster, NatsServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

WRITERS = 6
CTX = RequestContext.new()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Progress:
    """Counts acknowledged and failed appends; the test waits on counts, not on time."""

    count: int = 0
    failures: int = 0
    changed: anyio.Event = field(default_factory=anyio.Event)

    def acked(self) -> None:
        self.count += 1
        self._notify()

    def failed(self) -> None:
        self.failures += 1
        self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self.changed.wait()


def command(key: AggregateKey, first_version: int) -> CommandRecord:
    return CommandRecord(
        key=key,
        command_id=uuid7(),
        correlation_id="fault",
        trace_id=CTX.trace_id,
        first_version=first_version,
        events=events_from_decision(
            [{"type": "Deposited", "amount": first_version}], first_version=first_version
        ),
    )


async def append_resolving(
    store: JetStreamEventStore, rec: CommandRecord, expected: int, progress: Progress
) -> int:
    """Append until acknowledged, resolving uncertain outcomes from the history."""
    while True:
        try:
            return await store.append(rec, expected_last_seq=expected, context=CTX)
        except DuplicateAppendError as duplicate:
            # An earlier attempt landed and the retry was de-duplicated: it is stored there.
            progress.failed()
            return duplicate.seq
        except (BackendUnavailableError, VersionConflictError):
            progress.failed()
        try:
            for stored in await store.read(rec.key, after_seq=expected):
                if stored.record.command_id != rec.command_id:
                    pytest.fail(f"{rec.key}: a record this writer never sent at {stored.seq}")
                return stored.seq
        except BackendUnavailableError:
            pass
        # A pause between retries while the node restarts or a leader is elected.
        await anyio.sleep(0.02)


async def writer(
    store: JetStreamEventStore,
    key: AggregateKey,
    acked: list[tuple[int, uuid.UUID]],
    progress: Progress,
    stop: anyio.Event,
) -> None:
    last, version = 0, 1
    while not stop.is_set():
        rec = command(key, version)
        last = await append_resolving(store, rec, last, progress)
        acked.append((last, rec.command_id))
        version += 1
        progress.acked()


def check_history(stored: list[StoredRecord], acked: list[tuple[int, uuid.UUID]]) -> None:
    assert [(s.seq, s.record.command_id) for s in stored] == acked
    assert [s.record.first_version for s in stored] == list(range(1, len(acked) + 1))


async def run_writers_around(
    store: JetStreamEventStore,
    fault: Callable[[Progress], Awaitable[None]],
    *,
    before: int,
    after: int,
) -> tuple[dict[AggregateKey, list[tuple[int, uuid.UUID]]], int]:
    """Run the writers; inject ``fault`` after ``before`` acks; stop ``after`` acks later.
    Returns every writer's acknowledged (seq, command id) and the failures after the fault."""
    keys = [AggregateKey(f"t{i % 2}", "account", uuid7()) for i in range(WRITERS)]
    acked: dict[AggregateKey, list[tuple[int, uuid.UUID]]] = {k: [] for k in keys}
    progress = Progress()
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(writer, store, key, acked[key], progress, stop)
        await progress.wait_until(lambda: progress.count >= before)
        failures_before = progress.failures
        await fault(progress)
        resumed_from = progress.count
        await progress.wait_until(lambda: progress.count >= resumed_from + after)
        stop.set()
    return acked, progress.failures - failures_before


async def read_complete(
    store: JetStreamEventStore, key: AggregateKey, count: int
) -> list[StoredRecord]:
    """Read ``key`` until it has ``count`` records: direct gets may be served by a follower
    a moment behind. A lost append never completes the history (the caller's deadline
    fails the test)."""
    while True:
        stored = await store.read(key)
        if len(stored) >= count:
            return stored
        await anyio.sleep(0.05)


async def test_sigkill_and_restart_loses_no_acknowledged_append(
    nats_server: NatsServerProcess, connect_nats: Any
) -> None:
    async with connect_nats(nats_server.url) as nc:
        await ensure_stream(nc.jetstream(timeout=5), StreamPolicy())
        store = JetStreamEventStore(
            nc, request_timeout_s=0.5, publish_attempts=2, retry_backoff_s=0.02
        )

        async def kill_and_restart(progress: Progress) -> None:
            nats_server.kill()
            # Stay down until every writer has seen an append fail, then come back.
            failed = progress.failures
            await progress.wait_until(lambda: progress.failures >= failed + WRITERS)
            await anyio.to_thread.run_sync(nats_server.start)

        with anyio.fail_after(30):
            acked, failures = await run_writers_around(
                store, kill_and_restart, before=120, after=120
            )
            for key, history in acked.items():
                check_history(await store.read(key), history)
        await store.aclose()
    assert sum(len(h) for h in acked.values()) >= 240
    assert failures >= WRITERS, "the kill must have hit appends in flight"


async def test_stream_leader_loss_in_a_cluster_loses_no_acknowledged_append(
    nats_cluster: NatsCluster, connect_nats: Any
) -> None:
    name = f"R3_{uuid.uuid4().hex[:8]}"
    killed: list[NatsServerProcess] = []
    async with connect_nats(nats_cluster.urls) as nc:
        js = nc.jetstream(timeout=2)
        try:
            with anyio.fail_after(30):
                await ensure_stream(js, StreamPolicy(name=name, replicas=3), timeout_s=20)
            store = JetStreamEventStore(
                nc, stream=name, request_timeout_s=0.5, publish_attempts=2, retry_backoff_s=0.02
            )
            leaders: list[str] = []

            async def kill_leader(progress: Progress) -> None:
                info = await js.stream_info(name)
                assert info.cluster is not None
                assert info.cluster.leader is not None
                leaders.append(info.cluster.leader)
                node = nats_cluster.node_named(info.cluster.leader)
                node.kill()
                killed.append(node)

            with anyio.fail_after(40):
                acked, failures = await run_writers_around(
                    store, kill_leader, before=100, after=100
                )
                for key, history in acked.items():
                    check_history(await read_complete(store, key, len(history)), history)
                info = await js.stream_info(name)
            await store.aclose()
            assert info.cluster is not None
            assert info.cluster.leader not in (None, leaders[0])
            assert failures >= WRITERS, "the leader's loss must have hit appends in flight"
        finally:
            # Leave the module's cluster as it was: the stream gone, every node up. The
            # meta leader may itself be re-electing after the kill, so deleting may take
            # a few tries.
            with anyio.move_on_after(15):
                while True:
                    try:
                        await js.delete_stream(name)
                        break
                    except (nats.errors.Error, nats.js.errors.Error):
                        await anyio.sleep(0.2)
            for node in killed:
                await anyio.to_thread.run_sync(node.start)
