"""A small asyncio client for many shards: it follows a tenant to its owner.

``ShardedClient`` submits commands over gRPC (grpclib). When a node answers UNAVAILABLE
for a tenant it does not host, its trailers name the owner (``x-owner-shard``) and the
owner's address (``x-owner-addr``): the client sends the same command, with the same
command id, there. UNAVAILABLE without an address (a drain in progress, a move not yet
seen by every node) and a node that cannot be reached are retried after a backoff with
jitter, on the next known address. A retry is always safe: the service answers a command
id it has applied with the stored result (``duplicate``), never applying it twice.

Retries are bounded (``max_attempts``) and so is the whole call (``timeout``); the last
error is raised when either runs out. Any other status (a rejection, a conflict, a bad
argument) is raised at once. One client is used from one asyncio loop.

    async with ShardedClient(["10.0.0.1:50051", "10.0.0.2:50051"], tenant_id="acme") as c:
        reply = await c.submit("account", account_id, {"type": "Deposit", "amount": 5})
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpclib.client
import grpclib.exceptions
from grpclib.const import Status

from aggregate.domain.directory import split_dial_address, validate_dial_address
from aggregate.domain.errors import InvalidArgumentError
from aggregate.gateway.v1 import aggregate_grpc
from aggregate.gateway.v1 import aggregate_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

OWNER_ADDR = "x-owner-addr"
OWNER_SHARD = "x-owner-shard"


@dataclass(frozen=True)
class CommandFailedError(Exception):
    """The service refused the command with a status that a retry cannot change, or the
    retries (``attempts``) or the call's timeout ran out; ``status`` is the gRPC name."""

    status: str
    message: str
    attempts: int = 1

    def __str__(self) -> str:
        return f"{self.status}: {self.message} (after {self.attempts} attempt(s))"


@dataclass
class ClientStats:
    """What the client did, for callers that measure moves and failovers."""

    redirects: int = 0
    """Retries sent to the address an UNAVAILABLE answer named."""
    retries: int = 0
    """Retries after a backoff (UNAVAILABLE without an address, or no answer)."""
    unavailable_seconds: list[float] = field(default_factory=list)
    """Per command that needed retries: seconds from its first refusal to its success."""


class ShardedClient:
    """Submits commands for one tenant to whichever shard owns it.

    ``addrs`` are ``host:port`` seeds (any node will do); the client remembers the last
    owner it was sent to. ``backoff`` and ``backoff_max`` (seconds) shape the waits between
    retries; ``timeout`` bounds each whole ``submit`` (every attempt included).
    """

    def __init__(
        self,
        addrs: Sequence[str],
        *,
        tenant_id: str,
        timeout: float = 30.0,
        max_attempts: int = 50,
        backoff: float = 0.02,
        backoff_max: float = 0.5,
    ) -> None:
        if not addrs:
            raise ValueError("give at least one host:port")
        self._seeds = [validate_dial_address(a, "address") for a in addrs]
        self.tenant_id = tenant_id
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.addr = self._seeds[0]
        """Where the next command goes first."""
        self.stats = ClientStats()
        self._channels: dict[str, grpclib.client.Channel] = {}
        self._next_seed = 0

    async def __aenter__(self) -> ShardedClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every channel."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def _stub(self, addr: str) -> aggregate_grpc.CommandServiceStub:
        channel = self._channels.get(addr)
        if channel is None:
            host, port = split_dial_address(addr)
            channel = self._channels[addr] = grpclib.client.Channel(host, port)
        return aggregate_grpc.CommandServiceStub(channel)

    def _drop(self, addr: str) -> None:
        channel = self._channels.pop(addr, None)
        if channel is not None:
            channel.close()

    def _rotate(self) -> None:
        self._next_seed = (self._next_seed + 1) % len(self._seeds)
        self.addr = self._seeds[self._next_seed]

    async def submit(
        self,
        aggregate_type: str,
        aggregate_id: str,
        payload: dict[str, Any],
        *,
        command_id: str | None = None,
        expected_version: int | None = None,
    ) -> pb.SubmitCommandResponse:
        """Submit one command, following the tenant's owner and retrying with the same
        command id until it is answered.

        Raises:
            CommandFailedError: a status a retry cannot change, or retries/timeout ran out.

        Cancellation: the command may or may not have been applied; submitting it again
        with the same ``command_id`` is safe.
        """
        request = pb.SubmitCommandRequest(
            command_id=command_id or str(uuid.uuid4()),
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            payload_json=json.dumps(payload),
        )
        if expected_version is not None:
            request.expected_version = expected_version
        deadline = time.monotonic() + self.timeout
        first_refusal: float | None = None
        last = CommandFailedError("UNAVAILABLE", "no attempt was made", 0)
        for attempt in range(1, self.max_attempts + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            addr = self.addr
            trailers: list[Any] = []
            try:
                reply = await self._call(addr, request, left, trailers)
            except grpclib.exceptions.GRPCError as exc:
                if exc.status is not Status.UNAVAILABLE:
                    raise CommandFailedError(exc.status.name, exc.message or "", attempt) from None
                last = CommandFailedError("UNAVAILABLE", exc.message or "", attempt)
                first_refusal = first_refusal or time.monotonic()
                owner = _owner_addr(trailers[0] if trailers else None)
                if owner is not None and owner != addr:
                    self.addr = owner
                    self.stats.redirects += 1
                    continue
            except (OSError, TimeoutError, grpclib.exceptions.StreamTerminatedError) as exc:
                last = CommandFailedError("UNAVAILABLE", f"{addr}: {exc!r}", attempt)
                first_refusal = first_refusal or time.monotonic()
                self._drop(addr)
                self._rotate()
            else:
                if first_refusal is not None:
                    self.stats.unavailable_seconds.append(time.monotonic() - first_refusal)
                return reply
            self.stats.retries += 1
            delay = min(self.backoff_max, self.backoff * 2 ** min(attempt, 10))
            await asyncio.sleep(min(delay * random.uniform(0.5, 1.0), max(0.0, left)))
        raise CommandFailedError(last.status, last.message, last.attempts)

    async def _call(
        self, addr: str, request: pb.SubmitCommandRequest, left: float, trailers: list[Any]
    ) -> pb.SubmitCommandResponse:
        """One attempt; on a gRPC error its trailing metadata is appended to ``trailers``."""
        call = self._stub(addr).SubmitCommand.open(
            timeout=left, metadata={"x-tenant-id": self.tenant_id}
        )
        try:
            async with call:
                await call.send_message(request, end=True)
                reply = await call.recv_message()
                await call.recv_trailing_metadata()
        except grpclib.exceptions.GRPCError:
            trailers.append(call.trailing_metadata)
            raise
        if reply is None:  # pragma: no cover - a server answers or fails
            raise grpclib.exceptions.GRPCError(Status.UNKNOWN, "no answer")
        return reply


def _owner_addr(metadata: Any) -> str | None:
    """The validated ``x-owner-addr`` of UNAVAILABLE trailers, if any."""
    if not metadata:
        return None
    value = metadata.get(OWNER_ADDR)
    if not isinstance(value, str):
        return None
    try:
        return validate_dial_address(value)
    except InvalidArgumentError:
        return None
