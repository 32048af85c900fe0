"""The quota watcher: live per-tenant quota overrides from a NATS KV key (DESIGN §13).

The key (``aggregate_quotas`` by default) lives in the placement bucket and holds a JSON
object in the shape of ``aggregate.domain.quota`` (tenant_id -> {commands_per_second, burst,
max_in_flight}). It is followed exactly like the placement map (``PlacementWatcher``: a
re-read on reconnect, after watch failures and periodically; entries applied only when newer),
so this class only changes what a value means. A value that is not valid JSON, too large or
out of bounds is logged and ignored: the last good overrides stay in force.

asyncio (nats-py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from aggregate.adapters.placement_kv import PlacementWatcher
from aggregate.domain.errors import AggregateError
from aggregate.domain.json_input import loads_json
from aggregate.domain.quota import QuotaOverrides, parse_quota_overrides

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

logger = logging.getLogger(__name__)

DEFAULT_QUOTA_KEY: Final = "aggregate_quotas"
MAX_VALUE_BYTES: Final = 1_048_576
"""Largest override value read from the key; larger values are ignored."""
MAX_DEPTH: Final = 4


class QuotaWatcher(PlacementWatcher):
    """Follows the quota-override key; ``overrides()`` yields validated maps (None: the key
    is absent or deleted, no overrides)."""

    _overrides: QuotaOverrides | None = None

    @property
    def overrides(self) -> QuotaOverrides | None:
        """The last good overrides (None: none)."""
        return self._overrides

    async def quota_updates(self) -> AsyncIterator[QuotaOverrides | None]:
        """The overrides read at start (first: the consumer is caught up), then every change.
        Runs until cancelled.

        Raises:
            BackendUnavailableError: the first read failed, or the connection was closed.
            ConfigError: the bucket name is invalid.
        """
        async for _ in self.updates():
            yield self._overrides

    def _take(self, value: bytes | None, revision: int, *, deleted: bool) -> bool:
        self._revision = revision
        overrides: QuotaOverrides | None
        if deleted or value is None:
            overrides = None
        else:
            try:
                if len(value) > MAX_VALUE_BYTES:
                    raise AggregateError(
                        f"the value has {len(value)} bytes, more than {MAX_VALUE_BYTES}"
                    )
                overrides = parse_quota_overrides(
                    loads_json(value, what="quota overrides", max_depth=MAX_DEPTH, max_int_digits=9)
                )
            except AggregateError as exc:
                logger.warning(
                    "ignoring invalid quota overrides in %s/%s at revision %d (keeping the "
                    "last good ones): %s",
                    self.bucket,
                    self.key,
                    revision,
                    exc.message,
                )
                return False
        if overrides == self._overrides:
            return False
        self._overrides = overrides
        return True
