"""Progress and the consumed-record index on NATS KV (any node reads what another wrote).

Progress: bucket ``AGGREGATE_INGEST_PROGRESS``, key ``<tenant>.<source>``, value the
``SourceProgress`` JSON, written with the revision it was read at (compare-and-set).
Index: bucket ``AGGREGATE_INGEST_CONSUMED``, key ``<tenant>.<sha256 of the idempotency
key, 40 hex>`` (keys are arbitrary text, KV keys are not), value the ``ConsumedEntry``
JSON, created once (``create`` fails when the key exists). Pages are read in write order
with batch direct get on the bucket's stream, so listing costs no consumer.

Library errors become ``BackendUnavailableError`` here (STYLE 9); every wait is bounded by
the request timeout.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import anyio
import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig

from aggregate.adapters.jetstream.direct_get import DirectGetClient
from aggregate.application.ingest_ports import Claim, ConsumedPage, ProgressConflictError
from aggregate.domain.errors import BackendUnavailableError, ConfigError
from aggregate.ingest.progress import ConsumedEntry, SourceProgress

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

log = logging.getLogger(__name__)
SCAN_LIMIT = 1000
"""Most index entries one ``page`` call looks at (the answer may hold fewer after the
source filter; ``next_after`` says where to go on)."""


def index_key(tenant_id: str, idempotency_key: str) -> str:
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]
    return f"{tenant_id}.{digest}"


class _Bucket:
    def __init__(
        self, nc: Client, bucket: str, *, timeout_s: float, replicas: int, description: str
    ) -> None:
        self._js = nc.jetstream(timeout=timeout_s)
        self._nc = nc
        self.bucket = bucket
        self._timeout_s = timeout_s
        self._replicas = replicas
        self._description = description
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        """The bucket, created (history 1, direct get) when missing.

        Raises:
            ConfigError: the bucket name is invalid.
            BackendUnavailableError: NATS did not answer in time.
        """
        if self._kv is not None:
            return self._kv
        try:
            with anyio.fail_after(self._timeout_s * 2):
                try:
                    self._kv = await self._js.key_value(self.bucket)
                except nats.js.errors.BucketNotFoundError:
                    config = KeyValueConfig(
                        bucket=self.bucket,
                        description=self._description,
                        history=1,
                        replicas=self._replicas,
                        direct=True,
                    )
                    try:
                        self._kv = await self._js.create_key_value(config)
                    except nats.js.errors.BadRequestError:  # another node made it first
                        self._kv = await self._js.key_value(self.bucket)
        except nats.js.errors.InvalidBucketNameError:
            raise ConfigError(f"KV bucket name {self.bucket!r} is invalid") from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise BackendUnavailableError(
                f"NATS KV bucket {self.bucket} is not reachable: {type(exc).__name__}"
            ) from None
        return self._kv

    def unavailable(self, exc: BaseException) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"NATS KV bucket {self.bucket} did not answer: {type(exc).__name__}"
        )


class NatsProgressStore:
    """``ProgressStore`` on a NATS KV bucket."""

    def __init__(self, nc: Client, bucket: str, *, timeout_s: float, replicas: int = 1) -> None:
        self._bucket = _Bucket(
            nc, bucket, timeout_s=timeout_s, replicas=replicas,
            description="aggregate usage ingestion: progress per source",
        )  # fmt: skip
        self._timeout_s = timeout_s

    async def load(self, tenant_id: str, source: str) -> tuple[SourceProgress, int]:
        kv = await self._bucket.kv()
        try:
            with anyio.fail_after(self._timeout_s):
                entry = await kv.get(f"{tenant_id}.{source}")
        except nats.js.errors.KeyNotFoundError:
            return SourceProgress(), 0
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._bucket.unavailable(exc) from None
        return SourceProgress.from_json(entry.value or b"{}"), int(entry.revision or 0)

    async def save(
        self, tenant_id: str, source: str, progress: SourceProgress, revision: int
    ) -> int:
        kv = await self._bucket.kv()
        key = f"{tenant_id}.{source}"
        try:
            with anyio.fail_after(self._timeout_s):
                if revision == 0:
                    return int(await kv.create(key, progress.to_json()))
                return int(await kv.update(key, progress.to_json(), last=revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise ProgressConflictError(f"progress of {key} changed meanwhile") from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._bucket.unavailable(exc) from None

    async def delete(self, tenant_id: str, source: str) -> None:
        kv = await self._bucket.kv()
        try:
            with anyio.fail_after(self._timeout_s):
                await kv.delete(f"{tenant_id}.{source}")
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._bucket.unavailable(exc) from None


class NatsConsumedIndex:
    """``ConsumedIndex`` on a NATS KV bucket."""

    def __init__(self, nc: Client, bucket: str, *, timeout_s: float, replicas: int = 1) -> None:
        self._bucket = _Bucket(
            nc, bucket, timeout_s=timeout_s, replicas=replicas,
            description="aggregate usage ingestion: consumed records by idempotency key",
        )  # fmt: skip
        self._timeout_s = timeout_s
        self._direct = DirectGetClient(nc, f"KV_{bucket}", timeout_s=timeout_s)

    async def claim(self, tenant_id: str, entry: ConsumedEntry) -> Claim:
        kv = await self._bucket.kv()
        key = index_key(tenant_id, entry.idempotency_key)
        try:
            with anyio.fail_after(self._timeout_s):
                try:
                    revision = await kv.create(key, entry.to_json())
                    return Claim(entry, True, int(revision))
                except nats.js.errors.KeyWrongLastSequenceError:
                    stored = await kv.get(key)
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._bucket.unavailable(exc) from None
        try:
            first = ConsumedEntry.from_json(stored.value or b"")
        except (ValueError, KeyError, TypeError):
            raise BackendUnavailableError(
                f"index entry {key} of bucket {self._bucket.bucket} is unreadable"
            ) from None
        return Claim(first, False, int(stored.revision or 0))

    async def release(self, tenant_id: str, idempotency_key: str, revision: int) -> None:
        kv = await self._bucket.kv()
        key = index_key(tenant_id, idempotency_key)
        try:
            with anyio.fail_after(self._timeout_s):
                await kv.purge(key) if revision == 0 else await kv.delete(key, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # someone else's entry now: keep it
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._bucket.unavailable(exc) from None

    async def get(self, tenant_id: str, idempotency_key: str) -> ConsumedEntry | None:
        kv = await self._bucket.kv()
        try:
            with anyio.fail_after(self._timeout_s):
                stored = await kv.get(index_key(tenant_id, idempotency_key))
        except nats.js.errors.KeyNotFoundError:
            return None
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._bucket.unavailable(exc) from None
        return ConsumedEntry.from_json(stored.value or b"")

    async def page(
        self, tenant_id: str, *, after: int, limit: int, source: str | None
    ) -> ConsumedPage:
        await self._bucket.kv()
        subject = f"$KV.{self._bucket.bucket}.{tenant_id}.*"
        batch = await self._direct.get_batch(subject, after + 1, SCAN_LIMIT)
        entries: list[tuple[int, ConsumedEntry]] = []
        last = after
        for message in batch.messages:
            if len(entries) >= limit:
                break
            last = message.seq
            if not message.data:
                continue  # a delete or purge marker
            try:
                entry = ConsumedEntry.from_json(message.data)
            except (ValueError, KeyError, TypeError):
                log.warning("index entry at sequence %d is unreadable; skipped", message.seq)
                continue
            if source is None or entry.source == source:
                entries.append((message.seq, entry))
        return ConsumedPage(entries, last if last > after else None)

    async def aclose(self) -> None:
        """Nothing to release beyond the connection's own subscriptions."""
