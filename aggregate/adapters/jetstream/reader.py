"""Read one aggregate's events straight from JetStream, for people (``aggregate events``).

Runs its own short asyncio loop; not used on the command path.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aggregate.adapters.jetstream.connect import open_connection
from aggregate.adapters.jetstream.store import JetStreamEventStore

if TYPE_CHECKING:
    from aggregate.domain.ids import AggregateKey


async def _read(servers: list[str], stream: str, key: AggregateKey, timeout_s: float) -> list[Any]:
    nc = await open_connection(servers, timeout_s=timeout_s, reconnect=False, setting="--timeout")
    try:
        store = JetStreamEventStore(nc, stream=stream, request_timeout_s=timeout_s)
        try:
            return await store.read(key)
        finally:
            await store.aclose()
    finally:
        await nc.close()


def read_events(
    servers: list[str], stream: str, key: AggregateKey, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Every event of ``key`` in order, with the stream sequence and command id of its message.

    Raises:
        BackendUnavailableError: NATS cannot be reached within ``timeout`` seconds.
        TenantAccessDeniedError, CorruptDataError: a stored message is not ``key``'s.
    """
    stored = asyncio.run(_read(servers, stream, key, timeout))
    return [
        {
            "stream_seq": item.seq,
            "command_id": str(item.record.command_id),
            **event.to_json(),
        }
        for item in stored
        for event in item.record.events
    ]
