"""The placement watcher: reads the placement map from NATS KV and follows its changes.

DESIGN §6. The bucket (``AGGREGATE_PLACEMENT``) is created with direct get allowed if it is
missing, and used as it is otherwise. The key (``aggregate_placement``) holds a JSON object
``tenant_id -> shard_id``; ``updates()`` yields validated ``PlacementMap``s, or None when
the key is absent or deleted. An invalid value is logged and ignored: the last good map
stays in force.

A KV watch is an ephemeral ordered consumer, and nats-py gives it no heartbeat: after a
server restart the consumer is gone and the watch falls silent without an error. So the
watcher re-reads the key and re-creates the watch whenever ``notify_reconnected`` is called
(wire it to nats-py's ``reconnected_cb``), after any watch failure, and every
``resync_interval`` seconds as a safety net. A re-read is authoritative (it also covers a
bucket that was recreated, whose revisions start again at 1); watch entries are applied only
when newer than the last revision seen.

asyncio (nats-py). Every request has a timeout; failures are retried with capped backoff and
jitter (reads are safe to repeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING, Final

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from aggregate.domain.errors import (
    AggregateError,
    BackendUnavailableError,
    ConfigError,
    VersionConflictError,
)
from aggregate.domain.placement import PlacementMap, parse_placement

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from nats.aio.client import Client

logger = logging.getLogger(__name__)

DEFAULT_BUCKET: Final = "AGGREGATE_PLACEMENT"
DEFAULT_KEY: Final = "aggregate_placement"

_RESYNC: Final = object()
_RETRYABLE = (nats.errors.Error, TimeoutError, OSError)


class PlacementWatcher:
    """Follows the placement key of one KV bucket over a nats-py connection.

    ``request_timeout`` bounds every NATS request; ``startup_attempts`` bounds the first
    read (``updates`` raises if the bucket cannot be reached at all); after that the watcher
    keeps retrying until it is cancelled.
    """

    def __init__(
        self,
        nc: Client,
        *,
        bucket: str = DEFAULT_BUCKET,
        key: str = DEFAULT_KEY,
        request_timeout: float = 5.0,
        replicas: int = 1,
        history: int = 5,
        resync_interval: float | None = 30.0,
        startup_attempts: int = 3,
        max_backoff: float = 5.0,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=request_timeout)
        self.bucket = bucket
        self.key = key
        self._timeout = request_timeout
        self._replicas = replicas
        self._history = history
        self._resync_interval = resync_interval
        self._startup_attempts = max(1, startup_attempts)
        self._max_backoff = max_backoff
        self._signals: asyncio.Queue[object] = asyncio.Queue()
        self._current: PlacementMap | None = None
        self._revision = 0
        self.resyncs = 0
        """How many times the key was re-read (tests and metrics)."""

    @property
    def revision(self) -> int:
        """The KV revision of the last value seen (0: none yet, or the key never existed)."""
        return self._revision

    @property
    def current(self) -> PlacementMap | None:
        """The last good placement map (None: no map)."""
        return self._current

    def notify_reconnected(self) -> None:
        """Ask for a re-read of the key and a fresh watch (call it from nats-py's
        ``reconnected_cb``). Must be called on the connection's event loop."""
        self._signals.put_nowait(_RESYNC)

    async def ensure_bucket(self) -> KeyValue:
        """The placement bucket, created (direct get allowed) if it does not exist.

        Raises:
            ConfigError: the bucket name is invalid.
            nats.errors.Error, TimeoutError: NATS did not answer (retryable).
        """
        try:
            async with asyncio.timeout(self._timeout * 2):
                return await self._js.key_value(self.bucket)
        except nats.js.errors.InvalidBucketNameError:
            raise ConfigError(f"placement bucket name {self.bucket!r} is invalid") from None
        except nats.js.errors.BucketNotFoundError:
            pass
        config = KeyValueConfig(
            bucket=self.bucket,
            description="aggregate tenant placement (tenant_id -> shard_id)",
            history=self._history,
            replicas=self._replicas,
            direct=True,
        )
        try:
            async with asyncio.timeout(self._timeout * 2):
                return await self._js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            # Another node created it first, with a configuration of its own: use it.
            async with asyncio.timeout(self._timeout * 2):
                return await self._js.key_value(self.bucket)

    async def put_placement(self, placement: PlacementMap | None) -> int:
        """Store ``placement`` in the key (None deletes it) for every node to follow.
        Returns the new revision (0 for a delete).

        Raises:
            nats.errors.Error, TimeoutError: NATS did not answer.
        """
        kv = await self.ensure_bucket()
        async with asyncio.timeout(self._timeout * 2):
            if placement is None:
                await kv.delete(self.key)
                return 0
            return await kv.put(self.key, placement.to_json().encode())

    async def update_placement(
        self, change: Callable[[PlacementMap | None], PlacementMap], attempts: int = 5
    ) -> int:
        """Read the key, store ``change(current)``, conditional on the revision read (a
        concurrent writer makes it read and try again, up to ``attempts`` times). Returns
        the new revision.

        Raises:
            InvalidArgumentError: the stored value is not a valid placement map.
            VersionConflictError: the key changed under every attempt.
            nats.errors.Error, TimeoutError: NATS did not answer.
        """
        kv = await self.ensure_bucket()
        for _ in range(max(1, attempts)):
            revision: int | None
            async with asyncio.timeout(self._timeout * 2):
                try:
                    entry = await kv.get(self.key)
                    current, revision = parse_placement(entry.value or b""), entry.revision
                except nats.js.errors.KeyNotFoundError as exc:
                    deleted = exc.entry
                    current, revision = None, deleted.revision if deleted is not None else None
                value = change(current).to_json().encode()
                try:
                    if revision:
                        return await kv.update(self.key, value, last=revision)
                    return await kv.create(self.key, value)
                except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
                    continue
        raise VersionConflictError(
            f"placement key {self.key!r} changed under every one of {attempts} attempts"
        )

    async def updates(self) -> AsyncIterator[PlacementMap | None]:
        """Yield the current placement (first: the state read at start, so the consumer
        knows it is caught up), then every change. Runs until cancelled.

        Raises:
            BackendUnavailableError: the first read failed ``startup_attempts`` times, or
                the connection was closed.
            ConfigError: the bucket name is invalid.

        Cancellation: stops the watch; nothing else to undo.
        """
        kv = await self._startup()
        yield self._current
        watch_failures = 0
        while True:
            watch = await self._open_watch_logged(kv)
            if watch is None:
                watch_failures += 1
                await self._backoff(watch_failures)
            else:
                watch_failures = 0
                pump = asyncio.create_task(self._pump(watch))
                try:
                    while (item := await self._next_signal()) is not _RESYNC:
                        if self._take_entry(item):
                            yield self._current
                finally:
                    pump.cancel()
                    await asyncio.wait({pump})
                    with contextlib.suppress(*_RETRYABLE):
                        async with asyncio.timeout(self._timeout):
                            await _stop_watch(watch)
            kv, changed = await self._resync_until_done()
            if changed:
                yield self._current

    async def _open_watch(self, kv: KeyValue) -> KeyValue.KeyWatcher:
        """Start a KV watch of the key (a seam for tests that simulate a silent watch).

        Raises:
            nats.errors.Error, TimeoutError: NATS did not answer.
        """
        async with asyncio.timeout(self._timeout * 2):
            return await kv.watch(self.key, inactive_threshold=60.0)

    async def _open_watch_logged(self, kv: KeyValue) -> KeyValue.KeyWatcher | None:
        try:
            return await self._open_watch(kv)
        except _RETRYABLE as exc:
            logger.warning("placement watch on %s/%s failed: %r", self.bucket, self.key, exc)
            return None

    async def _next_signal(self) -> object:
        """The next watch entry; ``_RESYNC`` when a re-read is due (asked for, periodic, or
        the watch broke)."""
        try:
            async with asyncio.timeout(self._resync_interval):
                item = await self._signals.get()
        except TimeoutError:
            return _RESYNC
        if isinstance(item, BaseException):
            logger.warning("placement watch on %s/%s broke: %r", self.bucket, self.key, item)
            return _RESYNC
        return item

    async def _startup(self) -> KeyValue:
        for attempt in range(1, self._startup_attempts + 1):
            try:
                kv = await self.ensure_bucket()
                await self._reread(kv)
                return kv
            except _RETRYABLE as exc:
                if self._nc.is_closed or attempt == self._startup_attempts:
                    raise BackendUnavailableError(
                        f"cannot read placement key {self.key!r} of KV bucket {self.bucket!r} "
                        f"after {attempt} attempt(s): {exc!r}; check the NATS connection and "
                        "that JetStream is enabled"
                    ) from exc
                await self._backoff(attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _resync_until_done(self) -> tuple[KeyValue, bool]:
        attempt = 0
        while True:
            attempt += 1
            try:
                kv = await self.ensure_bucket()
                return kv, await self._reread(kv)
            except _RETRYABLE as exc:
                if self._nc.is_closed:
                    raise BackendUnavailableError(
                        "the NATS connection is closed; placement is no longer followed"
                    ) from exc
                logger.warning(
                    "placement key %s/%s could not be re-read (attempt %d): %r",
                    self.bucket,
                    self.key,
                    attempt,
                    exc,
                )
                await self._backoff(attempt)

    async def _backoff(self, attempt: int) -> None:
        delay = min(self._max_backoff, 0.1 * 2 ** min(attempt, 10))
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _reread(self, kv: KeyValue) -> bool:
        """Read the key; authoritative, whatever its revision. Returns whether the map
        changed."""
        self.resyncs += 1
        value: bytes | None
        try:
            async with asyncio.timeout(self._timeout * 2):
                entry = await kv.get(self.key)
            value, revision = entry.value, entry.revision or 0
        except nats.js.errors.KeyNotFoundError as exc:
            deleted = exc.entry
            value, revision = None, (deleted.revision or 0) if deleted is not None else 0
        return self._take(value, revision, deleted=value is None)

    async def _pump(self, watch: KeyValue.KeyWatcher) -> None:
        try:
            async for entry in watch:
                if entry is not None:
                    self._signals.put_nowait(entry)
        except _RETRYABLE as exc:
            self._signals.put_nowait(exc)

    def _take_entry(self, entry: object) -> bool:
        if not isinstance(entry, KeyValue.Entry):
            return False
        revision = entry.revision or 0
        if revision <= self._revision:
            return False
        deleted = entry.operation in (KV_DEL, KV_PURGE)
        return self._take(None if deleted else entry.value, revision, deleted=deleted)

    def _take(self, value: bytes | None, revision: int, *, deleted: bool) -> bool:
        self._revision = revision
        placement: PlacementMap | None
        if deleted or value is None:
            placement = None
        else:
            try:
                placement = parse_placement(value)
            except AggregateError as exc:
                logger.warning(
                    "ignoring invalid placement map in %s/%s at revision %d (keeping the "
                    "last good map): %s",
                    self.bucket,
                    self.key,
                    revision,
                    exc.message,
                )
                return False
        if placement == self._current:
            return False
        self._current = placement
        return True


async def _stop_watch(watch: KeyValue.KeyWatcher) -> None:
    await watch.stop()  # type: ignore[no-untyped-call]
