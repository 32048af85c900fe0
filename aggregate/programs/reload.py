"""Hot reload of the decide/apply programs: load, check, swap atomically, retire the old.

``ProgramCatalog`` owns the ``ProgramRegistry`` the handler looks types up in and the
worker pools of ``process`` programs. ``reload`` reads the manifest and the program files
again (``load``, in a thread), starts a new worker pool when any type needs one, compiles
every Starlark program in it (``inline`` ones too, as at start-up), builds the new specs,
and only then swaps, in one step without an await: the registry's table and the pool that
process programs call. A command keeps the spec it looked up, so commands in flight finish
on the version they started with and the next ones run the new one. The old pool is
closed once the calls in flight in it have returned (each ends by its own hard deadline,
and no new call reaches it: process programs call whichever pool serves now), so a reload
kills no call. A reload that fails at any step changes nothing: the new pool is closed and
the error (``ProgramReloadError``) names the type, line and column, never a program's text
or a server path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.to_thread

from aggregate.domain.envelopes import utc_now_rfc3339
from aggregate.domain.errors import (
    ConfigError,
    ProgramError,
    ProgramLimitError,
    ProgramReloadError,
    bound_message,
)
from aggregate.domain.manifest import ANY_TYPE, Isolation, Language
from aggregate.programs.pool import WorkerPool
from aggregate.programs.registry import (
    ProgramRegistry,
    build_specs,
    check_manifest,
    isolation_warnings,
    program_version,
)
from aggregate.programs.starlark_compile import source_key
from aggregate.programs.starlark_program import check_in_worker

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from anyio.abc import TaskGroup

    from aggregate.domain.manifest import AggregateTypeManifest, Manifest
    from aggregate.programs.base import AggregateTypeSpec, ProgramLimits

log = logging.getLogger(__name__)

_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/[^\s,;:'\"()]+")


def without_paths(text: str) -> str:
    """``text`` with each absolute path cut to its last part (``/srv/p/decide.star`` →
    ``decide.star``): reload errors reach HTTP clients, server paths must not."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def public_reload_error(
    exc: ConfigError | ProgramError | ProgramLimitError,
) -> ProgramReloadError:
    """The refusal an operator is answered for a failed reload: the first line of the
    error (a compile error's code snippet is on the lines after it) without server paths,
    naming the type, line and column of a program that does not compile."""
    first = exc.message.splitlines()[0] if exc.message else type(exc).__name__
    if isinstance(exc, ProgramError):
        if exc.origin and exc.line is not None:
            first = first.replace(f"{exc.origin}:{exc.line}:{exc.column}", "")
        if exc.origin:
            first = first.replace(exc.origin, without_paths(exc.origin))
        where = f" at line {exc.line}, column {exc.column}" if exc.line is not None else ""
        prefix = f"aggregate type {exc.program}{where}: " if exc.program else ""
        return ProgramReloadError(
            bound_message(f"programs not reloaded: {prefix}{without_paths(first)}"),
            program=exc.program,
            line=exc.line,
            column=exc.column,
        )
    return ProgramReloadError(bound_message(f"programs not reloaded: {without_paths(first)}"))


@dataclass(frozen=True, slots=True)
class LoadedType:
    """What ``GET /admin/programs`` says of one type (``*``: every type a request names)."""

    name: str
    language: str
    isolation: str
    decide_sha256: str
    apply_sha256: str
    program_version: str
    loaded_at: str

    @classmethod
    def of(cls, spec: AggregateTypeManifest, loaded_at: str) -> LoadedType:
        return cls(
            name=spec.name,
            language=spec.language.value,
            isolation=spec.isolation.value,
            decide_sha256=source_key(spec.decide.text),
            apply_sha256=source_key(spec.apply.text),
            program_version=program_version(spec),
            loaded_at=loaded_at,
        )

    def as_dict(self) -> dict[str, str]:
        return {
            "aggregate_type": self.name,
            "language": self.language,
            "isolation": self.isolation,
            "decide_sha256": self.decide_sha256,
            "apply_sha256": self.apply_sha256,
            "program_version": self.program_version,
            "loaded_at": self.loaded_at,
        }


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a reload changed, by type name: new types, types gone, types whose program
    version changed, and the rest."""

    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]
    types: list[LoadedType]

    @property
    def replaced(self) -> list[str] | None:
        """The types whose served programs differ now (None: every type, when the
        programs serving every type changed)."""
        touched = sorted({*self.added, *self.removed, *self.changed})
        return None if ANY_TYPE in touched else touched

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "types": [t.as_dict() for t in self.types],
        }


class PoolSlot:
    """The worker pool that serves now; process programs call through it, so a program
    built before a reload calls the new pool afterwards (it compiles the old text there on
    first use, which it did once already: compiling is deterministic)."""

    def __init__(self) -> None:
        self.current: WorkerPool | None = None

    @property
    def limits(self) -> ProgramLimits:
        if self.current is None:
            raise ProgramError("no program worker pool is running")
        return self.current.limits

    async def request(
        self, message: dict[str, Any], *, sources: Mapping[str, str], time_limit: float
    ) -> Any:
        """``WorkerPool.request`` on the pool serving now."""
        pool = self.current
        if pool is None:
            raise ProgramError("no program worker pool is running")
        return await pool.request(message, sources=sources, time_limit=time_limit)


@dataclass
class _Generation:
    """One worker pool's life: ``retire`` asks its owner task to close it once idle;
    ``closed`` is set when it has."""

    pool: WorkerPool | None
    retire: anyio.Event
    closed: anyio.Event = dataclasses.field(default_factory=anyio.Event)


def _needs_pool(manifest: Manifest) -> bool:
    return any(
        t.language is Language.STARLARK and t.isolation is Isolation.PROCESS
        for t in manifest.types.values()
    )


class ProgramCatalog:
    """The programs served now, and their hot reload. Open with ``async with``: it loads
    and checks the manifest (raising as ``reload`` does, but the original errors, for the
    start-up message), and closes every worker pool on exit."""

    def __init__(
        self,
        load: Callable[[], Manifest],
        limits: ProgramLimits,
        *,
        clock: Callable[[], str] = utc_now_rfc3339,
    ) -> None:
        self._load = load
        self.limits = limits
        self._clock = clock
        self.registry = ProgramRegistry()
        self._slot = PoolSlot()
        self._manifest: Manifest | None = None
        self._loaded: dict[str, LoadedType] = {}
        self._generation: _Generation | None = None
        self.last_retired: _Generation | None = None
        """The pool generation the last reload replaced (tests wait on its ``closed``)."""
        self._lock = anyio.Lock()
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self.reloads = 0

    async def __aenter__(self) -> Self:
        """Raises:
        ConfigError, ProgramCompileError, ProgramLimitError, ProgramError: the manifest
            or a program is invalid, or the worker pool did not start."""
        stack = contextlib.AsyncExitStack()
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(self._tg.cancel_scope.cancel)
        self._stack = stack
        try:
            manifest = self._load()
            for warning in isolation_warnings(manifest):
                log.warning("%s", warning)
            self._install(manifest, *await self._prepare(manifest))
        except BaseException:
            await stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    @property
    def manifest(self) -> Manifest:
        """The manifest serving now (the last one loaded or reloaded)."""
        assert self._manifest is not None, "the catalog is not open"
        return self._manifest

    @property
    def pool(self) -> WorkerPool | None:
        """The worker pool serving now (None: no type runs in worker processes)."""
        return self._slot.current

    def describe(self) -> list[dict[str, str]]:
        """Each type served now, sorted by name (``GET /admin/programs``)."""
        return [self._loaded[name].as_dict() for name in sorted(self._loaded)]

    async def reload(self, on_swap: Callable[[ReloadOutcome], None] | None = None) -> ReloadOutcome:
        """Load, check and swap in the manifest and programs as they are now. ``on_swap``
        runs right after the swap, before any other task sees the new programs serve.
        One reload at a time (others wait).

        Raises:
            ProgramReloadError: the manifest or a program is invalid or does not compile
                within the limits; nothing changed.

        Cancellation: before the swap, nothing changed; the swap itself is not interrupted.
        """
        async with self._lock:
            try:
                manifest = await anyio.to_thread.run_sync(self._load)
                prepared = await self._prepare(manifest)
            except (ConfigError, ProgramError, ProgramLimitError) as exc:
                log.warning("programs not reloaded: %s", exc.message)
                raise public_reload_error(exc) from None
            before = self._manifest
            self._install(manifest, *prepared)
            outcome = self._outcome(before, manifest)
            if on_swap is not None:
                on_swap(outcome)
            self.reloads += 1
        for warning in isolation_warnings(manifest):
            log.warning("%s", warning)
        log.info(
            "programs reloaded: added %s, removed %s, changed %s, unchanged %s",
            outcome.added or "none",
            outcome.removed or "none",
            outcome.changed or "none",
            outcome.unchanged or "none",
        )
        return outcome

    async def _prepare(
        self, manifest: Manifest
    ) -> tuple[dict[str, AggregateTypeSpec], _Generation | None]:
        """Specs of ``manifest`` checked in a new worker pool (when a type needs one), not
        serving yet. On failure the new pool is closed and the error propagates."""
        if not _needs_pool(manifest):
            return await check_manifest(manifest, limits=self.limits), None
        generation = await self._start_pool()
        assert generation.pool is not None
        try:
            for spec in manifest.types.values():
                if spec.language is Language.STARLARK:
                    await check_in_worker(generation.pool, spec.name, spec.decide, spec.apply)
            return build_specs(manifest, limits=self.limits, pool=self._slot), generation
        except BaseException:
            generation.retire.set()
            raise

    def _install(
        self,
        manifest: Manifest,
        specs: dict[str, AggregateTypeSpec],
        generation: _Generation | None,
    ) -> None:
        """The swap: no await in here, so no command sees half of it."""
        # Without a new pool, the one serving (if any) stays: a command still running on
        # the programs before the swap may yet call it.
        old = self._generation
        if generation is not None:
            self._slot.current = generation.pool
            self._generation = generation
        self.registry.replace(specs)
        now = self._clock()
        before = self._manifest.types if self._manifest is not None else {}
        self._loaded = {
            name: self._loaded[name]
            if before.get(name) == spec
            else LoadedType.of(spec, now)  # an unchanged type keeps its load time
            for name, spec in manifest.types.items()
        }
        self._manifest = manifest
        if old is not None and old is not self._generation:
            self.last_retired = old
            old.retire.set()

    def _outcome(self, before: Manifest | None, after: Manifest) -> ReloadOutcome:
        """A type changed when anything of its manifest entry did (programs, isolation,
        initial state: each changes what a replay folds)."""
        old = before.types if before is not None else {}
        new = after.types
        both = set(old) & set(new)
        return ReloadOutcome(
            added=sorted(set(new) - set(old)),
            removed=sorted(set(old) - set(new)),
            changed=sorted(n for n in both if old[n] != new[n]),
            unchanged=sorted(n for n in both if old[n] == new[n]),
            types=[self._loaded[n] for n in sorted(self._loaded)],
        )

    async def _start_pool(self) -> _Generation:
        assert self._tg is not None
        generation: _Generation = await self._tg.start(self._own_pool)
        return generation

    async def _own_pool(self, *, task_status: anyio.abc.TaskStatus[_Generation]) -> None:
        """Own one worker pool for its whole life (a pool's task group must be left by the
        task that entered it): start it, report it, wait until it is replaced, wait for
        its calls in flight, close it."""
        generation: _Generation | None = None
        try:
            async with WorkerPool(self.limits) as pool:
                generation = _Generation(pool, anyio.Event())
                task_status.started(generation)
                await generation.retire.wait()
                await pool.wait_idle()
        finally:
            if generation is not None:
                generation.closed.set()
        log.info("a replaced program worker pool closed (its calls in flight had finished)")
