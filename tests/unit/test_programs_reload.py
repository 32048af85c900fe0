"""Hot reload of programs (``ProgramCatalog``): swap, refusal, worker pool replacement."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from aggregate.config.manifest import read_program_file
from aggregate.domain.errors import ProgramReloadError
from aggregate.domain.manifest import AggregateTypeManifest, Isolation, Manifest
from aggregate.programs.base import Accepted, ProgramLimits
from aggregate.programs.reload import ProgramCatalog, ReloadOutcome, without_paths

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

LIMITS = ProgramLimits(pool_size=1, soft_timeout_seconds=120, hard_timeout_seconds=120)
SPIN = """
def decide(state, command):
    n = 0
    for a in range(command["outer"]):
        for b in range(10000):
            n += 1
    return [{"type": "Spun", "n": n}]
"""


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def counter(step: int) -> str:
    return (
        "def decide(state, command):\n"
        f'    return [{{"type": "Counted", "by": {step}}}]\n'
        "def apply(state, event):\n"
        '    return dict(state, n = state.get("n", 0) + event["by"])\n'
    )


class Files:
    """Program files on disk, read by the catalog's loader each time it loads."""

    def __init__(self, directory: Path, isolation: Isolation = Isolation.PROCESS) -> None:
        self.directory = directory
        self.isolation = isolation

    def write(self, name: str, text: str) -> None:
        (self.directory / f"{name}.star").write_text(text)

    def load(self) -> Manifest:
        types = {}
        for path in sorted(self.directory.glob("*.star")):
            source = read_program_file(path)
            types[path.stem] = AggregateTypeManifest(
                name=path.stem, decide=source, apply=source, isolation=self.isolation
            )
        return Manifest(types=types)


async def decide(catalog: ProgramCatalog, name: str) -> Accepted:
    decision = await catalog.registry.get(name).program.decide({"n": 0}, {"type": "Count"})
    assert isinstance(decision, Accepted)
    return decision


@pytest.mark.parametrize("isolation", [Isolation.PROCESS, Isolation.INLINE])
async def test_a_reload_swaps_changed_types_and_keeps_the_others(
    tmp_path: Path, isolation: Isolation
) -> None:
    files = Files(tmp_path, isolation)
    files.write("counter", counter(1))
    files.write("steady", counter(7))
    async with ProgramCatalog(files.load, LIMITS) as catalog:
        before = {t["aggregate_type"]: t for t in catalog.describe()}
        assert (await decide(catalog, "counter")).state == {"n": 1}
        files.write("counter", counter(10))
        files.write("fresh", counter(3))
        outcome = await catalog.reload()
        assert (outcome.added, outcome.removed) == (["fresh"], [])
        assert (outcome.changed, outcome.unchanged) == (["counter"], ["steady"])
        assert (await decide(catalog, "counter")).state == {"n": 10}
        assert (await decide(catalog, "fresh")).state == {"n": 3}
        after = {t["aggregate_type"]: t for t in catalog.describe()}
        assert after["steady"] == before["steady"]  # unchanged: same hashes, same load time
        assert after["counter"]["decide_sha256"] != before["counter"]["decide_sha256"]
        assert after["counter"]["program_version"] != before["counter"]["program_version"]
        assert catalog.registry.get("counter").version == after["counter"]["program_version"]
        assert after["counter"]["isolation"] == isolation.value


async def test_a_failed_reload_changes_nothing_and_names_type_line_and_column(
    tmp_path: Path,
) -> None:
    files = Files(tmp_path)
    files.write("counter", counter(1))
    async with ProgramCatalog(files.load, LIMITS) as catalog:
        spec, pool, listing = catalog.registry.get("counter"), catalog.pool, catalog.describe()
        secret = "def decide(state, command):\n    return [SECRET_TOKEN}\n"
        files.write("counter", secret)
        with pytest.raises(ProgramReloadError) as caught:
            await catalog.reload()
        error = caught.value
        assert (error.program, error.line, error.column) == ("counter", 2, 25)
        assert error.message.startswith("programs not reloaded: aggregate type counter at line 2")
        assert str(tmp_path) not in error.message
        assert "SECRET_TOKEN" not in error.message
        assert catalog.registry.get("counter") is spec
        assert catalog.pool is pool
        assert catalog.describe() == listing
        assert (await decide(catalog, "counter")).state == {"n": 1}
        (tmp_path / "counter.star").unlink()
        (tmp_path / "counter.star").mkdir()  # unreadable: a configuration error
        files.write("other", counter(2))
        with pytest.raises(ProgramReloadError) as unreadable:
            await catalog.reload()
        assert str(tmp_path) not in unreadable.value.message
        assert catalog.registry.get("counter") is spec


async def test_the_worker_pool_is_replaced_without_killing_a_call_in_flight(
    tmp_path: Path,
) -> None:
    files = Files(tmp_path)
    files.write("spin", SPIN + "def apply(state, event):\n    return state\n")
    async with ProgramCatalog(files.load, LIMITS) as catalog:
        old_pool = catalog.pool
        assert old_pool is not None
        old_workers = old_pool.worker_pids
        program = catalog.registry.get("spin").program
        results: list[object] = []
        in_flight_at_swap: list[int] = []

        async def slow_call() -> None:
            results.append(await program.decide({}, {"type": "Spin", "outer": 30_000}))

        def swapped(outcome: ReloadOutcome) -> None:
            in_flight_at_swap.append(old_pool.calls_in_flight)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow_call)
                await trio.testing.wait_all_tasks_blocked()
                assert old_pool.calls_in_flight == 1
                files.write("spin", SPIN + "def apply(state, event):\n    return {}\n")
                await catalog.reload(swapped)
                assert catalog.pool is not old_pool
            assert in_flight_at_swap == [1]  # the call was running in the old pool
            assert results == [Accepted([{"type": "Spun", "n": 300_000_000}], {})]
            retired = catalog.last_retired
            assert retired is not None
            await retired.closed.wait()
        assert old_pool.worker_pids == []
        assert set(catalog.pool.worker_pids).isdisjoint(old_workers)  # type: ignore[union-attr]
        # A program built before the reload now calls the new pool.
        after = await program.decide({}, {"type": "Spin", "outer": 1})
        assert after == Accepted([{"type": "Spun", "n": 10_000}], {})


def test_reload_errors_show_no_server_path() -> None:
    assert without_paths("manifest /srv/app/m.yaml, key x: file /srv/p/decide.star") == (
        "manifest m.yaml, key x: file decide.star"
    )
    assert without_paths("environment variable AGGREGATE_DECIDE_PROGRAM") == (
        "environment variable AGGREGATE_DECIDE_PROGRAM"
    )


async def test_a_changed_initial_state_changes_the_type(tmp_path: Path) -> None:
    files = Files(tmp_path, Isolation.INLINE)
    files.write("counter", counter(1))
    initial: dict[str, object] = {}

    def load() -> Manifest:
        manifest = files.load()
        entry = dataclasses.replace(manifest.types["counter"], initial_state=dict(initial))
        return Manifest(types={"counter": entry})

    async with ProgramCatalog(load, LIMITS) as catalog:
        assert (await catalog.reload()).unchanged == ["counter"]
        initial["n"] = 100
        outcome = await catalog.reload()
        assert outcome.changed == ["counter"]
        assert outcome.replaced == ["counter"]
        assert catalog.registry.get("counter").initial_state == {"n": 100}
