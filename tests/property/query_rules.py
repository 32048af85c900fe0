"""The read side in the handler state machine: an index fed by the handlers' change feed,
queried with ``min_position`` = the stream's end and compared with the model's views;
rules restart the indexer, delete its file, and flip the placement (every tenant replayed).

Both handler instances of the machine report to one change feed, as the handler pipeline
of one node would; writes by another node reach an index through a placement change (the
``placement_changed`` rule), which makes every tenant replay from the stream.

Filters and orders: the empty filter and ``aggregate_id`` for now (the model's answer is
every view of the tenant's type, by aggregate id).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, rule

from aggregate.application.changes import ChangeFeed
from aggregate.query.index_store import IndexStore, token_key
from aggregate.query.indexer import Indexer, IndexSettings
from aggregate.query.plan import QueryRequest

if TYPE_CHECKING:
    from concurrent.futures import Future

    from anyio.abc import TaskStatus

TYPE = "bank-account"


class RunningIndex:
    """An indexer serving in the world's portal until ``stop``."""

    def __init__(self, world: Any, feed: ChangeFeed, path: Path) -> None:
        self.world = world
        self.store = IndexStore(path)
        reader = world.reader if world.reader is not None else world.store
        self.indexer = Indexer(
            store=self.store,
            feed=feed,
            reader=reader,
            events=world.store,
            types=world.types(),
            token_key=token_key(path),
            settings=IndexSettings(batch_interval_s=0.02, retry_s=0.02, max_wait_s=10),
        )
        feed.consumers.append(self.indexer)
        self.feed = feed
        self.scope: anyio.CancelScope | None = None
        self.future: Future[None]
        self.future, _ = world.portal.start_task(self._serve)

    async def _serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope() as self.scope:
            async with anyio.create_task_group() as tg:
                await tg.start(self.indexer.serve)
                task_status.started()

    def stop(self) -> None:
        self.feed.consumers.remove(self.indexer)
        assert self.scope is not None  # set before start_task returned
        self.world.portal.call(self.scope.cancel)
        self.future.result(timeout=30)
        self.store.close()


class QueryRules:
    """Mixed into ``HandlerMachine`` (which provides ``world``, ``model``, ``key``)."""

    tenants = Bundle("tenants")
    world: Any
    model: Any

    def start_index(self, feed: ChangeFeed) -> None:
        self.index_dir = Path(tempfile.mkdtemp(prefix="machine-index-"))
        self.index_path = self.index_dir / "index.db"
        self.feed = feed
        self.index = RunningIndex(self.world, feed, self.index_path)

    def stop_index(self) -> None:
        self.index.stop()
        shutil.rmtree(self.index_dir, ignore_errors=True)

    @rule(tenant=tenants, page_size=st.integers(1, 4))
    def query_every_view(self, tenant: str, page_size: int) -> None:
        """After the stream's end as min_position, the index answers exactly the model's
        views of the tenant, in aggregate-id order, across pages."""
        end = self.world.portal.call(self.index.indexer.reader.stream_end)
        self.compare_query(tenant, page_size=page_size, min_position=end)

    def compare_query(self, tenant: str, *, page_size: int, min_position: int) -> None:
        end = min_position
        tenant_id = self.world.tenant_prefix + tenant
        got: list[tuple[str, int, dict[str, Any]]] = []
        token = ""
        position = 0
        while True:
            answer = self.world.portal.call(self._query, tenant_id, page_size, token, end)
            assert len(answer.rows) <= page_size
            got.extend((r.aggregate_id, r.version, json.loads(r.state)) for r in answer.rows)
            position = answer.position
            token = answer.next_page_token
            if not token:
                break
        want = sorted(
            (str(agg), view[0], view[1])
            for (t, kind, agg) in self.model.aggregates
            if t == tenant and kind == TYPE and (view := self.model.view((t, kind, agg)))
        )
        note(f"query {tenant_id} at >= {end}: {len(got)} views, position {position}")
        assert position >= end
        assert got == want, f"index has {got}, model has {want}"

    async def _query(self, tenant_id: str, page_size: int, token: str, end: int) -> Any:
        return await self.index.indexer.query(
            QueryRequest(tenant_id, TYPE, "", "", page_size, token),
            min_position=end,
            timeout_s=10,
        )

    @rule(
        amounts=st.lists(st.integers(1, 9), min_size=2, max_size=4),
        delays=st.lists(st.sampled_from([0.0, 0.0, 0.005, 0.04]), min_size=4, max_size=4),
    )
    def concurrent_commands_then_query(self, amounts: list[int], delays: list[float]) -> None:
        """Accounts opened at once on both nodes, their acknowledgements delayed so they
        come back out of position order; a query with the highest position they answered
        must show every one of them (and everything before). On the tenant without a quota:
        the rule is about ordering (the quota rules count every admission)."""
        tenant = "globex"
        from aggregate.domain.context import RequestContext
        from aggregate.domain.envelopes import Command

        if hasattr(self.world.store, "ack_delays"):
            self.world.store.ack_delays = list(delays)
        ids = [self.fresh_id() for _ in amounts]  # type: ignore[attr-defined]
        command_ids = [self.fresh_id() for _ in amounts]  # type: ignore[attr-defined]
        payloads = [{"type": "OpenAccount", "owner": f"c{n}"} for n in amounts]
        results: list[Any] = [None] * len(ids)

        async def all_at_once() -> None:
            async def one(i: int) -> None:
                node = self.nodes[i % 2]  # type: ignore[attr-defined]
                key = self.key(tenant, ids[i])  # type: ignore[attr-defined]
                results[i] = await node.handle(
                    Command(key, command_ids[i], payloads[i], RequestContext.new())  # type: ignore[attr-defined]
                )

            async with anyio.create_task_group() as tg:
                for i in range(len(ids)):
                    tg.start_soon(one, i)

        self.world.portal.call(all_at_once)
        for i, agg in enumerate(ids):
            self.model.submit((tenant, TYPE, agg), command_ids[i], payloads[i])  # type: ignore[attr-defined]
        highest = max(r.position for r in results)
        note(f"concurrent opens at positions {[r.position for r in results]}")
        self.compare_query(tenant, page_size=3, min_position=highest)

    @rule()
    def restart_indexer(self) -> None:
        """A new indexer on the same file: it replays what the file lacks."""
        self.index.stop()
        self.index = RunningIndex(self.world, self.feed, self.index_path)

    @rule()
    def delete_index_file(self) -> None:
        """The file is deleted between runs: the new indexer rebuilds it from the stream."""
        self.index.stop()
        for suffix in ("", "-wal", "-shm"):
            self.index_path.with_name(self.index_path.name + suffix).unlink(missing_ok=True)
        self.index = RunningIndex(self.world, self.feed, self.index_path)

    @rule(hosts_every_tenant=st.booleans())
    def placement_changed(self, hosts_every_tenant: bool) -> None:
        """Every tenant is replayed from the stream before it is answered again."""
        self.index.indexer.placement_changed(hosts_every_tenant=hosts_every_tenant)
