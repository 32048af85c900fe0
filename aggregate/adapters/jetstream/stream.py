"""The event stream's policy: create it when missing, validate it when present (DESIGN §4.1).

The stream holds every event ever appended, so the policy is about what must never happen:
no limit may drop a message (``discard=new`` and no size, count or age limits), no single
message may be deleted (``deny_delete``), reads must not need consumers (``allow_direct``),
and storage must survive a restart (file). An existing stream is never updated: an
incompatible one is refused with one line per setting, because changing it could lose data
or need a decision only an operator can make.

Differences that cannot lose events are accepted and reported as notes for the log:
``duplicate_window`` (the publish-retry de-duplication window; the conditional append, not
this window, is what prevents double appends), ``num_replicas`` (scaling is an operator's
call), extra subjects, ``max_msg_size`` (a too-small value refuses appends, it drops
nothing), ``deny_purge=true`` (it disables tenant erasure, which cannot be undone on that
stream), compression and the consumer limits.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import nats.errors
import nats.js.errors
from nats.js.api import (
    DiscardPolicy,
    PersistMode,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)

from aggregate.adapters.jetstream.errors import (
    FATAL_CONNECTION_ERRORS,
    TRANSIENT_ERRORS,
    StreamPolicyError,
)
from aggregate.domain.errors import BackendUnavailableError, ConfigError

if TYPE_CHECKING:
    from nats.js import JetStreamContext

DEFAULT_STREAM_NAME = "AGGREGATE_EVENTS"
EVENT_SUBJECTS = "tenant.*.aggregate.>"

_STREAM_NOT_FOUND = 10059
_STREAM_NAME_IN_USE = 10058
# Answers of a cluster that is still electing leaders or learning its peers.
_TRANSIENT_API_CODES = frozenset({10008, 10005, 10023})


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    """The event stream the service wants (DESIGN §4.1)."""

    name: str = DEFAULT_STREAM_NAME
    replicas: int = 1
    duplicate_window_s: float = 120.0
    subjects: tuple[str, ...] = (EVENT_SUBJECTS,)

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in " .*>\t\r\n/\\"):
            raise ConfigError(f"stream name {self.name!r} is invalid for JetStream")
        if not 1 <= self.replicas <= 5:
            raise ConfigError(f"stream replicas must be 1..5, got {self.replicas}")
        if self.duplicate_window_s < 0:
            raise ConfigError(f"duplicate window must be >= 0 s, got {self.duplicate_window_s}")

    def stream_config(self) -> StreamConfig:
        """The configuration a new stream is created with."""
        return StreamConfig(
            name=self.name,
            description="aggregate: one message per command, one subject per aggregate",
            subjects=list(self.subjects),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            max_msgs=-1,
            max_bytes=-1,
            max_age=0,
            max_msgs_per_subject=-1,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window_s,
            allow_direct=True,
            deny_delete=True,
            deny_purge=False,
            allow_rollup_hdrs=False,
        )


@dataclass(frozen=True, slots=True)
class StreamCheck:
    """The verdict on an existing stream's configuration."""

    problems: tuple[str, ...]
    """Incompatible settings: the store must not run on this stream."""
    notes: tuple[str, ...]
    """Accepted differences, worth a log line."""

    @property
    def compatible(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class EnsuredStream:
    """What ``ensure_stream`` found or made."""

    info: StreamInfo
    created: bool
    notes: tuple[str, ...]


def subject_covers(pattern: str, subject: str) -> bool:
    """True when every subject matched by ``subject`` (itself maybe a wildcard) is matched by
    ``pattern``: ``>`` and ``tenant.>`` cover ``tenant.*.aggregate.>``, ``tenant.a.>`` does not.
    """
    want = subject.split(".")
    have = pattern.split(".")
    for index, token in enumerate(have):
        if token == ">":
            return index < len(want)
        if index >= len(want) or want[index] == ">":
            return False
        if token != "*" and token != want[index]:
            return False
    return len(have) == len(want)


def _limited(value: float | int | None) -> bool:
    return value is not None and value > 0


def check_stream_config(existing: StreamConfig, policy: StreamPolicy) -> StreamCheck:
    """Compare an existing stream's configuration with ``policy``; no I/O."""
    problems: list[str] = []
    notes: list[str] = []
    subjects = list(existing.subjects or [])
    problems.extend(
        f"subjects {subjects} do not capture {wanted!r}: appends would have no stream"
        for wanted in policy.subjects
        if not any(subject_covers(have, wanted) for have in subjects)
    )
    extra = [s for s in subjects if not any(subject_covers(w, s) for w in policy.subjects)]
    if extra:
        notes.append(f"stream also captures subjects {extra}")
    if existing.retention not in (None, RetentionPolicy.LIMITS):
        problems.append(
            f"retention={existing.retention} removes messages once consumed; need 'limits'"
        )
    if existing.discard == DiscardPolicy.OLD:
        problems.append("discard=old would drop the oldest events at a limit; need discard=new")
    for name, value in (
        ("max_msgs", existing.max_msgs),
        ("max_bytes", existing.max_bytes),
        ("max_msgs_per_subject", existing.max_msgs_per_subject),
    ):
        if _limited(value):
            problems.append(f"{name}={value} limits what is kept; events must never be dropped")
    if _limited(existing.max_age):
        problems.append(f"max_age={existing.max_age}s would expire events; need 0 (no limit)")
    if existing.storage == StorageType.MEMORY:
        problems.append("storage=memory loses every event on restart; need storage=file")
    if existing.allow_direct is not True:
        problems.append("allow_direct=false: events are read with direct get; need true")
    if existing.deny_delete is not True:
        problems.append("deny_delete=false lets single events be deleted; need true")
    if existing.allow_rollup_hdrs:
        problems.append("allow_rollup_hdrs=true lets a message purge a subject; need false")
    if existing.sealed:
        problems.append("the stream is sealed: it accepts no appends")
    if existing.mirror is not None:
        problems.append("the stream is a mirror: it accepts no appends")
    if existing.persist_mode == PersistMode.ASYNC:
        problems.append("persist_mode=async may lose acknowledged appends; need the default")
    if existing.allow_msg_ttl:
        notes.append("allow_msg_ttl=true: messages published with a Nats-TTL header expire")
    if existing.deny_purge:
        notes.append("deny_purge=true: tenant erasure by subject purge is impossible")
    if (existing.num_replicas or 1) != policy.replicas:
        notes.append(f"num_replicas={existing.num_replicas}, configured {policy.replicas}")
    if abs((existing.duplicate_window or 0) - policy.duplicate_window_s) > 1e-6:
        notes.append(
            f"duplicate_window={existing.duplicate_window}s, configured "
            f"{policy.duplicate_window_s}s"
        )
    if _limited(existing.max_msg_size):
        notes.append(f"max_msg_size={existing.max_msg_size} refuses larger commands")
    return StreamCheck(tuple(problems), tuple(notes))


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, nats.js.errors.APIError) and (
        exc.code == 503 or exc.err_code in _TRANSIENT_API_CODES
    )


async def ensure_stream(
    js: JetStreamContext, policy: StreamPolicy, *, timeout_s: float = 30.0
) -> EnsuredStream:
    """Create the event stream if it is missing; validate it if it exists; never update it.

    Transient answers (no JetStream responders yet, a cluster still electing its meta
    leader or learning its peers) are retried with backoff until ``timeout_s``.

    Raises:
        StreamPolicyError: the existing stream is incompatible; it was not changed.
        BackendUnavailableError: JetStream did not answer usefully within ``timeout_s``.
        ConfigError: JetStream refused to create the stream (the message says why).

    Cancellation: a create request may or may not have reached the server; calling again
    is safe (creating an identical stream is idempotent, an existing one is validated).
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            return await _ensure_once(js, policy)
        except (StreamPolicyError, ConfigError):
            raise
        except FATAL_CONNECTION_ERRORS as exc:
            raise BackendUnavailableError(f"NATS connection unusable: {exc!r}") from exc
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            if not _transient(exc) or time.monotonic() + delay > deadline:
                raise BackendUnavailableError(
                    f"JetStream did not create or describe stream {policy.name!r} within "
                    f"{timeout_s}s (is JetStream enabled and the cluster up?): {exc}"
                ) from exc
        await anyio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 1.0)


async def _ensure_once(js: JetStreamContext, policy: StreamPolicy) -> EnsuredStream:
    try:
        info = await js.stream_info(policy.name)
    except nats.js.errors.NotFoundError as exc:
        if exc.err_code not in (None, _STREAM_NOT_FOUND):
            raise
        try:
            info = await js.add_stream(policy.stream_config())
            return EnsuredStream(info, created=True, notes=())
        except nats.js.errors.APIError as create_exc:
            if _transient(create_exc):
                raise
            if create_exc.err_code != _STREAM_NAME_IN_USE:
                raise ConfigError(
                    f"JetStream refused to create stream {policy.name!r}: "
                    f"{create_exc.description} (err_code {create_exc.err_code})"
                ) from create_exc
            # Someone else created it with another configuration meanwhile: validate theirs.
            info = await js.stream_info(policy.name)
    check = check_stream_config(info.config, policy)
    if not check.compatible:
        raise StreamPolicyError(policy.name, list(check.problems))
    return EnsuredStream(info, created=False, notes=check.notes)
