"""The shard directory in NATS KV: this node's entry, its heartbeat, and the live shards.

Bucket ``AGGREGATE_SHARDS`` (a setting), key = shard id, value a ``ShardEntry`` as JSON.
The bucket's ``max_age`` is the TTL: an entry not refreshed within it is removed by the
server, so a shard that dies (or is cut off from NATS) drops out of the directory. A node
puts its entry when it starts serving, re-puts it every heartbeat interval, and deletes it
on a clean shutdown. ``live_updates`` re-reads the whole bucket every refresh tick and
yields the set of live shard ids when it changes; the placement controller makes it the
ring of the tenants absent from the map (failover, failback).

Every value read is external input: an entry that is too long, is not valid JSON of the
expected shape, names another shard than its key, or carries an address no client can dial
is logged (once per revision) and ignored. At most ``MAX_SHARDS`` entries are read.

The node itself always counts as live while it runs (until ``deregister``): a node that
cannot read the bucket keeps serving what it served, and safety never depends on the
directory (two writers of one aggregate are serialised by the conditional append).

asyncio (nats-py); every request has a timeout; reads and puts are retried at the next
tick (both are safe to repeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig

from aggregate.domain.directory import MAX_ENTRY_BYTES, ShardEntry, parse_entry
from aggregate.domain.errors import AggregateError, BackendUnavailableError, ConfigError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from nats.aio.client import Client
    from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

DEFAULT_BUCKET: Final = "AGGREGATE_SHARDS"
MAX_SHARDS: Final = 256
"""Most directory entries read; more are ignored (and logged)."""

_RETRYABLE = (nats.errors.Error, TimeoutError, OSError)


class ShardDirectory:
    """This node's view of, and entry in, the shard directory of one KV bucket.

    ``ttl`` (seconds) is the bucket's ``max_age`` when this node creates it; ``heartbeat``
    and ``refresh`` are the periods of the entry's refresh and of the bucket's re-read;
    ``request_timeout`` bounds every NATS request.
    """

    def __init__(
        self,
        nc: Client,
        *,
        shard_id: str,
        bucket: str = DEFAULT_BUCKET,
        ttl: float = 10.0,
        heartbeat: float = 2.0,
        refresh: float = 1.0,
        request_timeout: float = 5.0,
        replicas: int = 1,
    ) -> None:
        self._js = nc.jetstream(timeout=request_timeout)
        self.shard_id = shard_id
        self.bucket = bucket
        self.ttl = ttl
        self.heartbeat = heartbeat
        self.refresh = refresh
        self._timeout = request_timeout
        self._replicas = replicas
        self._kv: KeyValue | None = None
        self._entries: dict[str, ShardEntry] = {}
        self._own: ShardEntry | None = None
        self._leaving = False
        self._refused: dict[str, int] = {}
        self.reads = 0
        """How many times the bucket was read (tests and metrics)."""

    # ---- what the node knows --------------------------------------------------------
    @property
    def entries(self) -> Mapping[str, ShardEntry]:
        """The live entries of the last read (this node's own entry included once put)."""
        return self._entries

    def entry(self, shard_id: str) -> ShardEntry | None:
        """The live entry of ``shard_id`` (None: not in the directory)."""
        if shard_id == self.shard_id and self._own is not None and not self._leaving:
            return self._own
        return self._entries.get(shard_id)

    def live_shards(self) -> frozenset[str]:
        """The live shard ids: those of the last read, plus this node until it leaves."""
        shards = set(self._entries)
        if self._leaving:
            shards.discard(self.shard_id)
        else:
            shards.add(self.shard_id)
        return frozenset(shards)

    # ---- the bucket -------------------------------------------------------------------
    async def ensure_bucket(self) -> KeyValue:
        """The directory bucket, created (``max_age`` = the TTL, history 1) if missing.

        Raises:
            ConfigError: the bucket name is invalid.
            nats.errors.Error, TimeoutError: NATS did not answer (retryable).
        """
        if self._kv is not None:
            return self._kv
        try:
            async with asyncio.timeout(self._timeout * 2):
                kv = await self._js.key_value(self.bucket)
        except nats.js.errors.InvalidBucketNameError:
            raise ConfigError(f"shard directory bucket name {self.bucket!r} is invalid") from None
        except nats.js.errors.BucketNotFoundError:
            config = KeyValueConfig(
                bucket=self.bucket,
                description="aggregate shard directory (shard_id -> addresses)",
                history=1,
                ttl=self.ttl,
                replicas=self._replicas,
                max_value_size=MAX_ENTRY_BYTES,
                direct=True,
            )
            try:
                async with asyncio.timeout(self._timeout * 2):
                    kv = await self._js.create_key_value(config)
            except nats.js.errors.BadRequestError:  # another node created it first
                async with asyncio.timeout(self._timeout * 2):
                    kv = await self._js.key_value(self.bucket)
        self._kv = kv
        return kv

    async def register(self, entry: ShardEntry) -> None:
        """Put this node's entry (and keep it for the heartbeat).

        Raises:
            nats.errors.Error, TimeoutError: NATS did not answer.
        """
        self._own = entry
        self._leaving = False
        await self._put()

    async def deregister(self) -> None:
        """Delete this node's entry (clean shutdown): the other shards take its ring
        tenants at their next refresh. Failures are logged; the TTL removes it anyway."""
        self._leaving = True
        try:
            kv = await self.ensure_bucket()
            async with asyncio.timeout(self._timeout):
                await kv.delete(self.shard_id)
            log.info("shard %s left the shard directory %s", self.shard_id, self.bucket)
        except _RETRYABLE as exc:
            log.warning(
                "shard %s could not remove its directory entry (it expires after %gs): %r",
                self.shard_id,
                self.ttl,
                exc,
            )

    async def _put(self) -> None:
        assert self._own is not None
        kv = await self.ensure_bucket()
        async with asyncio.timeout(self._timeout):
            await kv.put(self.shard_id, self._own.to_json())

    async def serve_heartbeat(self) -> None:
        """Re-put this node's entry every ``heartbeat`` seconds until cancelled or
        ``deregister``; a failed put is logged and tried again at the next beat."""
        failures = 0
        while not self._leaving:
            await asyncio.sleep(self.heartbeat)
            if self._leaving or self._own is None:
                continue
            try:
                await self._put()
                if failures:
                    log.info("shard directory heartbeat of %s restored", self.shard_id)
                failures = 0
            except _RETRYABLE as exc:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning(
                        "shard directory heartbeat of %s failed (%d in a row): %r",
                        self.shard_id,
                        failures,
                        exc,
                    )

    async def read(self) -> dict[str, ShardEntry]:
        """Read every live entry of the bucket (bounded; bad entries logged and ignored).

        Raises:
            nats.errors.Error, TimeoutError: NATS did not answer.
        """
        kv = await self.ensure_bucket()
        self.reads += 1
        entries: dict[str, ShardEntry] = {}
        async with asyncio.timeout(self._timeout * 2):
            watcher = await kv.watchall(ignore_deletes=True, inactive_threshold=60.0)
            try:
                while True:
                    item = await watcher.updates(timeout=self._timeout)  # type: ignore[no-untyped-call]
                    if item is None:
                        break
                    if len(entries) >= MAX_SHARDS:
                        log.warning(
                            "shard directory %s holds more than %d entries; the rest are ignored",
                            self.bucket,
                            MAX_SHARDS,
                        )
                        break
                    entry = self._take(item.key, item.value or b"", item.revision or 0)
                    if entry is not None:
                        entries[entry.shard_id] = entry
                    if not item.delta:
                        break
            finally:
                with contextlib.suppress(*_RETRYABLE):
                    await watcher.stop()  # type: ignore[no-untyped-call]
        self._entries = entries
        return entries

    def _take(self, key: str, value: bytes, revision: int) -> ShardEntry | None:
        try:
            return parse_entry(value, key=key)
        except AggregateError as exc:
            if self._refused.get(key) != revision:
                self._refused[key] = revision
                log.warning(
                    "ignoring invalid shard directory entry %s/%s at revision %d: %s",
                    self.bucket,
                    key[:64],
                    revision,
                    exc.message,
                )
            return None

    async def startup(self, attempts: int = 3) -> frozenset[str]:
        """The first read, retried ``attempts`` times; returns the live shards.

        Raises:
            BackendUnavailableError: the bucket could not be read.
            ConfigError: the bucket name is invalid.
        """
        for attempt in range(1, attempts + 1):
            try:
                await self.read()
                return self.live_shards()
            except _RETRYABLE as exc:
                if attempt == attempts:
                    raise BackendUnavailableError(
                        f"cannot read the shard directory (KV bucket {self.bucket!r}) after "
                        f"{attempt} attempt(s): {exc!r}; check the NATS connection and that "
                        "JetStream is enabled"
                    ) from exc
                await asyncio.sleep(0.2 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def live_updates(self) -> AsyncIterator[frozenset[str]]:
        """Yield the live shards: first at once (``startup``), then after every refresh
        tick that changed them. Runs until cancelled; a failed read is logged and the last
        view kept.

        Raises:
            BackendUnavailableError, ConfigError: as ``startup``.
        """
        current = await self.startup()
        yield current
        failures = 0
        while True:
            await asyncio.sleep(self.refresh)
            try:
                await self.read()
                failures = 0
            except _RETRYABLE as exc:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning(
                        "shard directory %s could not be read (%d in a row): %r",
                        self.bucket,
                        failures,
                        exc,
                    )
                continue
            live = self.live_shards()
            if live != current:
                log.info("live shards changed: %s -> %s", sorted(current)[:20], sorted(live)[:20])
                current = live
                yield current
