"""The indexer over the in-memory store and a real SQLite file: read-your-writes, rebuilds
from the stream, tenant isolation, pages and tokens, uncertain appends."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from aggregate.application.changes import ChangeFeed
from aggregate.application.handler import CommandHandler, HandlerSettings
from aggregate.domain.errors import BackendUnavailableError, InvalidArgumentError
from aggregate.programs.base import AggregateTypeSpec
from aggregate.query.index_store import IndexStore, ViewRow, token_key
from aggregate.query.indexer import Indexer, IndexSettings
from aggregate.query.plan import QueryRequest
from aggregate.testing.memory_store import InMemoryEventStore
from aggregate.testing.programs import FunctionProgram, StaticTypes
from specs import bank
from tests.unit.test_handler import TYPE, cmd, new_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

pytestmark = pytest.mark.trio
TYPES = StaticTypes({TYPE: AggregateTypeSpec(TYPE, FunctionProgram(TYPE, bank.decide, bank.apply))})


@contextlib.asynccontextmanager
async def running(
    path: Path, store: InMemoryEventStore, **settings: Any
) -> AsyncIterator[tuple[CommandHandler, Indexer]]:
    feed = ChangeFeed()
    handler = CommandHandler(
        store=store, types=TYPES, change_sink=feed, settings=HandlerSettings(retry_backoff_s=0)
    )
    index = IndexStore(path)
    indexer = Indexer(
        store=index,
        feed=feed,
        reader=store,
        events=store,
        types=TYPES,
        token_key=token_key(path),
        settings=IndexSettings(**settings),
    )
    feed.consumers.append(indexer)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(indexer.serve)
            with anyio.fail_after(10):  # the start-up replay is done: the tests' changes are live
                await everything(indexer, "nobody")
            yield handler, indexer
            tg.cancel_scope.cancel()
    finally:
        index.close()


async def everything(
    indexer: Indexer, tenant: str = "acme", *, min_position: int = 0, page_size: int = 0
) -> tuple[list[tuple[str, int, int, dict[str, Any]]], int]:
    """Every view of the tenant's bank accounts, following the page tokens."""
    out = []
    token = ""
    position = 0
    while True:
        answer = await indexer.query(
            QueryRequest(tenant, TYPE, "", "", page_size, token),
            min_position=min_position,
            timeout_s=5,
        )
        out.extend(
            (r.aggregate_id, r.version, r.position, json.loads(r.state)) for r in answer.rows
        )
        position = answer.position
        token = answer.next_page_token
        if not token:
            return out, position


async def workload(handler: CommandHandler, tenant: str = "acme", n: int = 5) -> int:
    last = 0
    for i in range(n):
        key = new_key(tenant)
        last = (await handler.handle(cmd(key, {"type": "OpenAccount", "owner": f"o{i}"}))).position
        for amount in range(1, i + 1):
            last = (await handler.handle(cmd(key, {"type": "Deposit", "amount": amount}))).position
    return last


async def test_a_query_with_the_commands_position_sees_it(tmp_path: Path) -> None:
    store = InMemoryEventStore()
    # A long batch interval: without min_position the answer could be behind.
    async with running(tmp_path / "index.sqlite3", store, batch_interval_s=0.2) as (h, ix):
        with anyio.fail_after(10):
            key = new_key()
            await h.handle(cmd(key, {"type": "OpenAccount", "owner": "ann"}))
            result = await h.handle(cmd(key, {"type": "Deposit", "amount": 9}))
            views, position = await everything(ix, min_position=result.position)
    assert position >= result.position
    assert views == [(str(key.aggregate_id), 2, result.position, {"owner": "ann", "balance": 9})]


async def test_deleting_the_index_file_gives_identical_answers_after_the_rebuild(
    tmp_path: Path,
) -> None:
    store = InMemoryEventStore()
    path = tmp_path / "index.sqlite3"
    async with running(path, store) as (h, ix):
        with anyio.fail_after(10):
            last = await workload(h)
            await workload(h, "globex", 3)
            before, _ = await everything(ix, min_position=last, page_size=2)
    assert len(before) == 5
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    async with running(path, store, replay_page=3) as (_, ix):
        with anyio.fail_after(10):
            after, position = await everything(ix, page_size=2)
    assert position == store.last_seq_overall
    assert after == before


async def test_a_restart_replays_only_what_the_file_lacks(tmp_path: Path) -> None:
    store = InMemoryEventStore()
    path = tmp_path / "index.sqlite3"
    async with running(path, store) as (h, ix):
        with anyio.fail_after(10):
            await workload(h, n=3)
            await everything(ix, min_position=store.last_seq_overall)
    async with running(path, store) as (h, ix):
        with anyio.fail_after(10):
            await everything(ix)
            replayed = ix.replayer.total_messages
            last = await workload(h, n=2)
            views, _ = await everything(ix, min_position=last)
    assert replayed == 0
    assert len(views) == 5


async def test_tenants_see_only_their_own_views_and_tokens(tmp_path: Path) -> None:
    store = InMemoryEventStore()
    async with running(tmp_path / "index.sqlite3", store) as (h, ix):
        with anyio.fail_after(10):
            await workload(h, "acme", 3)
            last = await workload(h, "globex", 2)
            acme, _ = await everything(ix, "acme", min_position=last)
            globex, _ = await everything(ix, "globex", min_position=last)
            nobody, _ = await everything(ix, "initech", min_position=last)
            first = await ix.query(
                QueryRequest("acme", TYPE, "", "", 1, ""), min_position=0, timeout_s=5
            )
            with pytest.raises(InvalidArgumentError, match="does not belong to this query"):
                await ix.query(
                    QueryRequest("globex", TYPE, "", "", 1, first.next_page_token),
                    min_position=0,
                    timeout_s=5,
                )
            tampered = (
                first.next_page_token[:-2]
                + ("A" if first.next_page_token[-2] != "A" else "B")
                + first.next_page_token[-1]
            )
            with pytest.raises(InvalidArgumentError, match="page token"):
                await ix.query(
                    QueryRequest("acme", TYPE, "", "", 1, tampered), min_position=0, timeout_s=5
                )
    assert (len(acme), len(globex), nobody) == (3, 2, [])
    assert {v[3]["owner"] for v in globex} == {"o0", "o1"}
    assert not {v[0] for v in acme} & {v[0] for v in globex}


async def test_min_position_beyond_the_stream_is_a_timeout(tmp_path: Path) -> None:
    store = InMemoryEventStore()
    async with running(tmp_path / "index.sqlite3", store) as (h, ix):
        last = await workload(h, n=1)
        with anyio.fail_after(10), pytest.raises(TimeoutError, match="min_position"):
            await ix.query(
                QueryRequest("acme", TYPE, "", "", 0, ""), min_position=last + 5, timeout_s=0.2
            )


async def test_an_uncertain_append_is_resolved_from_the_stream(tmp_path: Path) -> None:
    """A lost acknowledgement: the message is stored but never offered. The watermark
    stays below it until a replay of the tenant has read it; then the query shows it."""
    store = InMemoryEventStore()
    async with running(tmp_path / "index.sqlite3", store, retry_s=0.05) as (h, ix):
        with anyio.fail_after(10):
            key = new_key()
            await h.handle(cmd(key, {"type": "OpenAccount", "owner": "ann"}))
            store.lose_next_ack()
            with pytest.raises(BackendUnavailableError):
                await h.handle(cmd(key, {"type": "Deposit", "amount": 4}))
            views, position = await everything(ix, min_position=2)
    assert position >= 2
    assert views == [(str(key.aggregate_id), 2, 2, {"owner": "ann", "balance": 4})]


async def test_a_tenant_is_replayed_after_a_placement_change(tmp_path: Path) -> None:
    """Messages written while the tenant was elsewhere (here: straight into the store, as
    another node would) are in the answer once the tenant is current again."""
    store = InMemoryEventStore()
    other = CommandHandler(store=store, types=TYPES, settings=HandlerSettings(retry_backoff_s=0))
    async with running(tmp_path / "index.sqlite3", store) as (h, ix):
        with anyio.fail_after(10):
            await workload(h, n=1)
            await everything(ix, min_position=store.last_seq_overall)
            ix.placement_changed(hosts_every_tenant=False)
            elsewhere = await workload(other, n=2)  # not offered to this node's feed
            views, position = await everything(ix)
    assert position >= elsewhere
    assert len(views) == 3


class BatchRecorder:
    """An ``IndexObserver`` that keeps what it is told."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.sizes: list[int] = []
        self.batch = anyio.Event()

    def index_batch(self, lags_s: Sequence[float], size: int, write_s: float) -> None:
        assert write_s >= 0
        self.lags.extend(lags_s)
        if size:
            self.sizes.append(size)
        self.batch.set()


async def test_every_live_change_is_timed_once_it_is_visible(tmp_path: Path) -> None:
    store = InMemoryEventStore()
    async with running(tmp_path / "index.sqlite3", store) as (h, ix):
        recorder = BatchRecorder()
        ix.observer = recorder
        with anyio.fail_after(10):
            last = await workload(h, n=4)  # 4 opens and 1 + 2 + 3 deposits
            await everything(ix, min_position=last)
    assert len(recorder.lags) == 10
    assert all(0 <= lag < 10 for lag in recorder.lags)
    assert sum(recorder.sizes) == 10


async def test_a_change_held_below_the_watermark_is_timed_when_it_becomes_visible(
    tmp_path: Path,
) -> None:
    """An append still open (started before the change was offered) holds the tenant's
    watermark: the change is written but not visible, so not timed until it is."""
    store = InMemoryEventStore()
    async with running(tmp_path / "index.sqlite3", store) as (h, ix):
        recorder = BatchRecorder()
        ix.observer = recorder
        with anyio.fail_after(10):
            ticket = ix.feed.append_started("acme")  # another command's append, in flight
            key = new_key()
            opened = await h.handle(cmd(key, {"type": "OpenAccount", "owner": "ann"}))
            while not recorder.sizes:  # its batch is written
                await recorder.batch.wait()
                recorder.batch = anyio.Event()
            assert ix.position("acme") < opened.position
            assert recorder.lags == []
            ix.feed.append_ended(ticket, uncertain=False)
            done = await h.handle(cmd(key, {"type": "Deposit", "amount": 1}))
            await everything(ix, min_position=done.position)
    assert len(recorder.lags) == 2
    assert recorder.lags[0] >= recorder.lags[1]  # the held one waited longer


async def test_a_batch_write_counts_the_views_it_changed(tmp_path: Path) -> None:
    """One statement per batch: rows only over older ones, watermarks only upwards, the
    count is the views changed, and a state's JSON text is stored as it was encoded."""
    index = IndexStore(tmp_path / "index.sqlite3")
    try:
        a, b, c = new_key(), new_key(), new_key("globex")
        state = {"owner": "zoë \"q\" '1'", "big": 2**70, "nested": {"x": [1, 2.5, None]}}
        first = [ViewRow(a, 1, 1, "t1", state), ViewRow(b, 1, 2, "t1", {"n": 1})]
        assert index.write(first, {"acme": 2}, replayed_through=2) == 2
        again = [ViewRow(a, 1, 1, "t9", {}), ViewRow(b, 2, 3, "t2", {"n": 2})]
        assert index.write(again, {"acme": 1, "globex": 3}) == 1
        assert index.write([ViewRow(c, 1, 4, "t3", {})], {}) == 1
        assert index.write([], {}) == 0
        views = index.views([a, b, c])
        assert views[a].state == state
        assert (views[a].version, views[a].position, views[a].updated_at) == (1, 1, "t1")
        assert (views[b].version, views[b].position, views[b].state) == (2, 3, {"n": 2})
        assert index.watermarks() == {"acme": 2, "globex": 3}
        assert index.replayed_through() == 2
    finally:
        index.close()


async def test_a_change_after_a_quiet_moment_is_written_at_once(tmp_path: Path) -> None:
    """The batch interval is the least time between batches, not a wait before each: a
    change with no batch in the last interval is visible without waiting for it."""
    store = InMemoryEventStore()
    async with running(tmp_path / "index.sqlite3", store, batch_interval_s=60) as (h, ix):
        with anyio.fail_after(10):
            key = new_key()
            opened = await h.handle(cmd(key, {"type": "OpenAccount", "owner": "ann"}))
            views, _ = await everything(ix, min_position=opened.position)
    assert views == [(str(key.aggregate_id), 1, opened.position, {"owner": "ann", "balance": 0})]
