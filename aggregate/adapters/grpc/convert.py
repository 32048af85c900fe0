"""Mapping between the gRPC messages of DESIGN §9.1 and the domain's commands and results.

Everything here but ``receive`` is synchronous and raises the domain's errors
(``InvalidArgumentError``, ``ResourceExhaustedError``); the servicer turns those into gRPC
statuses through the one table in ``aggregate.domain.status``. The tenant never comes from
a message body: only from the ``x-tenant-id`` metadata entry (DESIGN §6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from google.protobuf.message import DecodeError
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aggregate.domain.context import TENANT_HEADER
from aggregate.domain.envelopes import Command, dumps, parse_command_payload
from aggregate.domain.errors import InvalidArgumentError, ResourceExhaustedError, quote
from aggregate.domain.ids import (
    MAX_VERSION,
    AggregateKey,
    parse_uuid,
    uuid7,
    validate_aggregate_type,
    validate_tenant_id,
)
from aggregate.domain.json_input import DEFAULT_MAX_DEPTH, DEFAULT_MAX_INT_DIGITS
from aggregate.domain.status import RETRY_AFTER_HEADER
from aggregate.gateway.v1 import aggregate_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from grpclib.server import Stream

    from aggregate.domain.context import RequestContext
    from aggregate.domain.envelopes import AggregateView, CommandResult, Event

_Request = TypeVar("_Request")


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds on the fields of a ``SubmitCommandRequest`` besides the payload's size (the
    ``max_json_*`` and ``max_metadata_*`` settings)."""

    max_json_depth: int = DEFAULT_MAX_DEPTH
    max_json_int_digits: int = DEFAULT_MAX_INT_DIGITS
    max_metadata_entries: int = 64
    max_metadata_key_bytes: int = 128
    max_metadata_value_bytes: int = 1024
    max_metadata_bytes: int = 16_384


class TrailedError(GRPCError):
    """A ``GRPCError`` whose trailers carry metadata too (``x-owner-shard``,
    ``x-owner-addr`` on UNAVAILABLE for a tenant hosted elsewhere); the server sends them."""

    def __init__(self, status: Status, message: str, trailers: tuple[tuple[str, str], ...]):
        super().__init__(status, message)
        self.trailers = trailers


class Failure(NamedTuple):
    """A command's error as the client sees it: gRPC status name, public message and, for
    unary calls, trailing metadata (validated values only)."""

    code: str
    message: str
    retry_after_ms: int | None = None
    """When to retry (open breaker, quota, shedding): the ``retry-after-ms`` trailer."""
    owner: tuple[tuple[str, str], ...] = ()
    """Where the tenant went (``x-owner-shard``, ``x-owner-addr``), validated values."""
    quota_rate: float | None = None
    """A refusal by the tenant's quota: the commands/s quota that refused it (0: its
    in-flight quota); None for every other error (``aggregate.adapters.grpc.pacing``)."""

    def grpc_error(self) -> GRPCError:
        """The error that ends a call with this status, message and trailers (the server
        sends a ``TrailedError``'s trailers)."""
        trailers = self.trailers()
        if trailers:
            return TrailedError(Status[self.code], self.message, tuple(trailers.items()))
        return GRPCError(Status[self.code], self.message)

    def trailers(self) -> dict[str, str]:
        """The trailing metadata of this failure: ``retry-after-ms`` when known, the owner
        of a tenant hosted elsewhere."""
        trailers = dict(self.owner)
        if self.retry_after_ms is not None:
            trailers[RETRY_AFTER_HEADER] = str(self.retry_after_ms)
        return trailers


async def send_failure(stream: Stream[Any, Any], failure: Failure) -> None:
    """End a call with ``failure``: status, message and its trailing metadata."""
    await stream.send_trailing_metadata(
        status=Status[failure.code],
        status_message=failure.message,
        metadata=failure.trailers(),
    )


async def receive(stream: Stream[_Request, Any]) -> _Request | None:
    """The next request message of a call (None: the client ended its side).

    Raises:
        GRPCError: INVALID_ARGUMENT when the bytes are not a message of the request type.
    """
    try:
        return await stream.recv_message()
    except DecodeError as exc:
        raise GRPCError(
            Status.INVALID_ARGUMENT, f"the request is not a valid protobuf message: {exc}"
        ) from None


def metadata_headers(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """Text entries of gRPC invocation metadata, names in lower case, first value wins.

    Binary (``-bin``) entries are skipped: no context header is binary.
    """
    headers: dict[str, str] = {}
    for name, value in metadata or ():
        if isinstance(value, str):
            headers.setdefault(name.lower(), value)
    return headers


def resolve_tenant(
    headers: Mapping[str, str], *, multi_tenant: bool, default_tenant_id: str | None
) -> str:
    """The tenant of a call, from its ``x-tenant-id`` metadata (DESIGN §6).

    Missing: the default tenant when one is configured (always the case when multi-tenancy is
    off). With multi-tenancy off, a tenant other than the default one is refused rather than
    silently written into the default tenant.

    Raises:
        InvalidArgumentError: the id is malformed, missing without a default, or names another
            tenant than the only one a single-tenant server serves.
    """
    value = headers.get(TENANT_HEADER)
    if value is None or value == "":
        if default_tenant_id is None:
            raise InvalidArgumentError(
                f"missing {TENANT_HEADER} metadata: this server is multi-tenant and has no "
                "default tenant; send the tenant id in the x-tenant-id header"
            )
        return default_tenant_id
    tenant_id = validate_tenant_id(value)
    if not multi_tenant and tenant_id != default_tenant_id:
        raise InvalidArgumentError(
            f"this server is single-tenant (tenant {default_tenant_id!r}); omit {TENANT_HEADER} "
            f"or send {default_tenant_id!r}, not {tenant_id!r}"
        )
    return tenant_id


def payload_size(payload_json: str) -> int:
    """The UTF-8 size of a payload in bytes (without encoding ASCII text)."""
    return len(payload_json) if payload_json.isascii() else len(payload_json.encode())


def checked_metadata(metadata: Mapping[str, str], limits: RequestLimits) -> dict[str, str]:
    """A request's ``metadata`` map, within ``limits``.

    Raises:
        ResourceExhaustedError: too many entries, a key or value too long, or too many bytes
            in all (keys and values, UTF-8), naming the limit.
    """
    if not metadata:
        return {}
    count = len(metadata)
    if count > limits.max_metadata_entries:
        raise ResourceExhaustedError(
            f"metadata has {count} entries, more than the server's limit of "
            f"{limits.max_metadata_entries} (max_metadata_entries)"
        )
    total = 0
    for key, value in metadata.items():
        key_bytes, value_bytes = payload_size(key), payload_size(value)
        if key_bytes > limits.max_metadata_key_bytes:
            raise ResourceExhaustedError(
                f"metadata key {quote(key)} is {key_bytes} bytes, more than the server's limit "
                f"of {limits.max_metadata_key_bytes} (max_metadata_key_bytes)"
            )
        if value_bytes > limits.max_metadata_value_bytes:
            raise ResourceExhaustedError(
                f"metadata value of {quote(key)} is {value_bytes} bytes, more than the server's "
                f"limit of {limits.max_metadata_value_bytes} (max_metadata_value_bytes)"
            )
        total += key_bytes + value_bytes
    if total > limits.max_metadata_bytes:
        raise ResourceExhaustedError(
            f"metadata holds {total} bytes, more than the server's limit of "
            f"{limits.max_metadata_bytes} (max_metadata_bytes)"
        )
    return dict(metadata)


def command_from_request(
    request: pb.SubmitCommandRequest,
    *,
    tenant_id: str,
    context: RequestContext,
    max_payload_bytes: int,
    limits: RequestLimits = RequestLimits(),
) -> Command:
    """Validate a ``SubmitCommandRequest`` and build the domain command; the payload is
    decoded last, once every cheaper check has passed.

    An empty ``command_id`` gets a server-made UUIDv7 (a retry of such a request is a new
    command: no retry safety); an empty ``aggregate_id`` gets a new UUIDv7 (a new aggregate).

    Raises:
        InvalidArgumentError: a malformed id, type token, ``expected_version`` or payload.
        ResourceExhaustedError: the payload is larger than ``max_payload_bytes``, or the
            metadata is over one of its ``limits``.
    """
    aggregate_type = validate_aggregate_type(request.aggregate_type)
    command_id = parse_uuid(request.command_id, "command_id") if request.command_id else uuid7()
    aggregate_id = (
        parse_uuid(request.aggregate_id, "aggregate_id") if request.aggregate_id else uuid7()
    )
    expected = request.expected_version if request.HasField("expected_version") else None
    if expected is not None and expected > MAX_VERSION:
        raise InvalidArgumentError(
            f"expected_version {expected} is beyond the largest version an aggregate can "
            f"reach ({MAX_VERSION})"
        )
    size = payload_size(request.payload_json)
    if size > max_payload_bytes:
        raise ResourceExhaustedError(
            f"payload_json is {size} bytes, more than the server's limit of {max_payload_bytes} "
            "bytes (max_payload_bytes); send a smaller command"
        )
    metadata = checked_metadata(request.metadata, limits)
    payload = parse_command_payload(
        request.payload_json,
        max_depth=limits.max_json_depth,
        max_int_digits=limits.max_json_int_digits,
    )
    return Command(
        key=AggregateKey(tenant_id, aggregate_type, aggregate_id),
        command_id=command_id,
        payload=payload,
        context=context,
        metadata=metadata,
        expected_version=expected,
    )


def key_from_get_request(request: pb.GetAggregateRequest, *, tenant_id: str) -> AggregateKey:
    """The key a ``GetAggregateRequest`` names.

    Raises:
        InvalidArgumentError: a malformed type token, or an aggregate id that is not a UUID.
    """
    aggregate_type = validate_aggregate_type(request.aggregate_type)
    if not request.aggregate_id:
        raise InvalidArgumentError("aggregate_id is required: the UUID of the aggregate to read")
    return AggregateKey(tenant_id, aggregate_type, parse_uuid(request.aggregate_id, "aggregate_id"))


def event_message(event: Event) -> pb.Event:
    """An event as the wire's ``Event``; its payload without the ``type``, as JSON."""
    return pb.Event(
        event_id=str(event.event_id),
        event_type=event.event_type,
        version=event.version,
        payload_json=dumps(event.payload).decode(),
        timestamp=event.timestamp,
    )


def response_message(result: CommandResult) -> pb.SubmitCommandResponse:
    """A command's result as ``SubmitCommandResponse``."""
    key = result.key
    return pb.SubmitCommandResponse(
        tenant_id=key.tenant_id,
        aggregate_type=key.aggregate_type,
        aggregate_id=str(key.aggregate_id),
        command_id=str(result.command_id),
        version=result.version,
        events=[event_message(event) for event in result.events],
        duplicate=result.duplicate,
        position=result.position,
    )


def view_message(view: AggregateView) -> pb.AggregateView:
    """An aggregate's state as the wire's ``AggregateView``."""
    key = view.key
    return pb.AggregateView(
        tenant_id=key.tenant_id,
        aggregate_type=key.aggregate_type,
        aggregate_id=str(key.aggregate_id),
        version=view.version,
        state_json=dumps(view.state).decode(),
        position=view.position,
    )


def ok_result(result: CommandResult) -> pb.SubmitCommandResult:
    """A successful item of a ``SubmitCommands`` stream."""
    return pb.SubmitCommandResult(response=response_message(result))


def error_result(code: str, message: str) -> pb.SubmitCommandResult:
    """A failed item of a ``SubmitCommands`` stream; ``code`` is the gRPC status name."""
    return pb.SubmitCommandResult(error=pb.Error(code=code, message=message))
