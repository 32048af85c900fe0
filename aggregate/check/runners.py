"""The real programs as ``ProgramRunner``s: two worker processes for Starlark types (one
pool of one worker each, so "two processes" are two interpreters that share nothing), or
this process for trusted Python types. Async calls are made from the explorer's sync code
through one Trio blocking portal.

Every Starlark type runs in the workers here, ``inline`` ones too: the explorer feeds them
unusual commands, and a memory or big-integer bomb must kill a worker, not the check.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from anyio.from_thread import start_blocking_portal

from aggregate.domain.manifest import Isolation, Language
from aggregate.programs.pool import WorkerPool
from aggregate.programs.registry import build_specs

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from anyio.from_thread import BlockingPortal

    from aggregate.check.ports import ProgramRunner
    from aggregate.domain.envelopes import JsonObject
    from aggregate.domain.manifest import Manifest
    from aggregate.programs.base import AggregateProgram, Decision, ProgramLimits


@dataclass(frozen=True, slots=True)
class PortalRunner:
    """An ``AggregateProgram`` called through a blocking portal."""

    portal: BlockingPortal
    program: AggregateProgram
    where: str

    def decide(self, state: JsonObject, command: JsonObject) -> Decision:
        return self.portal.call(self.program.decide, state, command)

    def apply(self, state: JsonObject, events: Sequence[JsonObject]) -> JsonObject:
        return self.portal.call(self.program.apply, state, list(events))


def _in_workers(manifest: Manifest) -> Manifest:
    types = {
        name: dataclasses.replace(spec, isolation=Isolation.PROCESS)
        if spec.language is Language.STARLARK
        else spec
        for name, spec in manifest.types.items()
    }
    return dataclasses.replace(manifest, types=types)


@contextlib.contextmanager
def open_runners(
    manifest: Manifest, limits: ProgramLimits
) -> Iterator[dict[str, tuple[ProgramRunner, ProgramRunner]]]:
    """Per type, two runners: where the explorer decides first (and again), and a second
    process to compare with (this process again for Python types).

    Raises:
        ProgramError: a worker could not start.
        ProgramCompileError: a Python reference does not import.
    """
    one = dataclasses.replace(limits, pool_size=1)
    in_workers = _in_workers(manifest)
    starlark = any(t.language is Language.STARLARK for t in manifest.types.values())
    with start_blocking_portal("trio") as portal, contextlib.ExitStack() as stack:
        pools: list[WorkerPool | None] = [None, None]
        if starlark:
            pools = [
                stack.enter_context(portal.wrap_async_context_manager(WorkerPool(one)))
                for _ in range(2)
            ]
        first = build_specs(in_workers, limits=limits, pool=pools[0])
        second = build_specs(in_workers, limits=limits, pool=pools[1])
        runners: dict[str, tuple[ProgramRunner, ProgramRunner]] = {}
        for name, spec in manifest.types.items():
            python = spec.language is Language.PYTHON
            runners[name] = (
                PortalRunner(
                    portal, first[name].program, "this process" if python else "worker process 1"
                ),
                PortalRunner(
                    portal, second[name].program, "this process" if python else "worker process 2"
                ),
            )
        yield runners
