"""The event stream's policy (DESIGN §4.1): created right, validated, never changed."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from aggregate.adapters.jetstream import (
    EVENT_SUBJECTS,
    StreamPolicy,
    StreamPolicyError,
    check_stream_config,
    ensure_stream,
)
from aggregate.adapters.jetstream.stream import subject_covers
from aggregate.domain.errors import BackendUnavailableError, ConfigError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext

    from aggregate.adapters.nats_server import NatsServerProcess


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def js(shared_nats_server: NatsServerProcess, connect_nats: Any) -> AsyncIterator[Any]:
    """A JetStream context on the shared node; every stream it made is deleted after."""
    async with connect_nats(shared_nats_server.url) as nc:
        context = nc.jetstream(timeout=5)
        try:
            yield context
        finally:
            for info in await context.streams_info():
                await context.delete_stream(info.config.name)


def unique_name() -> str:
    return f"POLICY_{uuid.uuid4().hex[:10]}"


# --- pure checks of the validator ---------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "subject", "covered"),
    [
        (EVENT_SUBJECTS, EVENT_SUBJECTS, True),
        (">", EVENT_SUBJECTS, True),
        ("tenant.>", EVENT_SUBJECTS, True),
        ("tenant.*.>", EVENT_SUBJECTS, True),
        ("tenant.a.>", EVENT_SUBJECTS, False),
        ("tenant.*.aggregate.*", EVENT_SUBJECTS, False),
        ("tenant.*.aggregate.*.*", EVENT_SUBJECTS, False),
        ("tenant.*.events.>", EVENT_SUBJECTS, False),
        (EVENT_SUBJECTS, "tenant.a.aggregate.t.1", True),
        ("tenant.*.aggregate.>", "tenant.a.aggregate", False),
    ],
)
def test_subject_coverage(pattern: str, subject: str, covered: bool) -> None:
    assert subject_covers(pattern, subject) is covered


def test_policy_config_matches_the_design() -> None:
    config = StreamPolicy(name="X", replicas=3, duplicate_window_s=30).stream_config()
    assert config.subjects == [EVENT_SUBJECTS]
    assert (config.retention, config.storage, config.discard) == ("limits", "file", "new")
    assert (config.max_msgs, config.max_bytes, config.max_age) == (-1, -1, 0)
    assert config.max_msgs_per_subject == -1
    assert (config.allow_direct, config.deny_delete, config.deny_purge) == (True, True, False)
    assert (config.num_replicas, config.duplicate_window) == (3, 30)
    check = check_stream_config(config, StreamPolicy(name="X", replicas=3, duplicate_window_s=30))
    assert check.compatible
    assert check.notes == ()
    assert check_stream_config(config, StreamPolicy(replicas=1)).notes == (
        "num_replicas=3, configured 1",
        "duplicate_window=30s, configured 120.0s",
    )


def test_policy_refuses_bad_settings() -> None:
    with pytest.raises(ConfigError, match="stream name"):
        StreamPolicy(name="A.B")
    with pytest.raises(ConfigError, match="replicas"):
        StreamPolicy(replicas=0)


# --- against a real server ----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.anyio
async def test_missing_stream_is_created_with_the_policy(js: JetStreamContext) -> None:
    policy = StreamPolicy(name=unique_name(), duplicate_window_s=45)
    with anyio.fail_after(10):
        ensured = await ensure_stream(js, policy)
        config = (await js.stream_info(policy.name)).config
        again = await ensure_stream(js, policy)
    assert ensured.created
    assert not again.created
    assert again.notes == ()
    assert config.subjects == [EVENT_SUBJECTS]
    assert config.retention == RetentionPolicy.LIMITS
    assert config.storage == StorageType.FILE
    assert config.discard == DiscardPolicy.NEW
    assert (config.max_msgs, config.max_bytes, config.max_age) == (-1, -1, 0)
    assert config.max_msgs_per_subject == -1
    assert (config.allow_direct, config.deny_delete, config.deny_purge) == (True, True, False)
    assert config.duplicate_window == 45
    assert config.num_replicas == 1


def _incompatible(name: str, **changes: Any) -> StreamConfig:
    return StreamPolicy(name=name).stream_config().evolve(**changes)


@pytest.mark.integration
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"discard": DiscardPolicy.OLD}, "discard=old"),
        ({"max_age": 3600.0}, "max_age"),
        ({"max_msgs": 1000}, "max_msgs"),
        ({"max_bytes": 1 << 30}, "max_bytes"),
        ({"subjects": ["tenant.*.events.>"]}, "do not capture"),
        ({"allow_direct": False}, "allow_direct"),
        ({"deny_delete": False}, "deny_delete"),
        ({"storage": StorageType.MEMORY}, "storage=memory"),
        ({"retention": RetentionPolicy.INTEREST}, "retention"),
    ],
)
async def test_incompatible_stream_is_refused_and_left_unchanged(
    js: JetStreamContext, changes: dict[str, Any], named: str
) -> None:
    name = unique_name()
    with anyio.fail_after(10):
        await js.add_stream(_incompatible(name, **changes))
        before = (await js.stream_info(name)).config
        with pytest.raises(StreamPolicyError) as caught:
            await ensure_stream(js, StreamPolicy(name=name))
        after = (await js.stream_info(name)).config
    assert named in str(caught.value)
    assert len(caught.value.problems) == 1, caught.value.problems
    assert isinstance(caught.value, ConfigError)
    assert after == before


@pytest.mark.integration
@pytest.mark.anyio
async def test_every_incompatible_setting_is_named(js: JetStreamContext) -> None:
    name = unique_name()
    changes = {"discard": DiscardPolicy.OLD, "max_age": 3600.0, "allow_direct": False}
    with anyio.fail_after(10):
        await js.add_stream(_incompatible(name, **changes))
        with pytest.raises(StreamPolicyError) as caught:
            await ensure_stream(js, StreamPolicy(name=name))
    message = str(caught.value)
    assert all(part in message for part in ("discard=old", "max_age", "allow_direct"))
    assert name in message


@pytest.mark.integration
@pytest.mark.anyio
async def test_benign_differences_are_accepted_and_reported(js: JetStreamContext) -> None:
    name = unique_name()
    with anyio.fail_after(10):
        await js.add_stream(
            _incompatible(name, duplicate_window=10.0, subjects=[EVENT_SUBJECTS, "audit.>"])
        )
        ensured = await ensure_stream(js, StreamPolicy(name=name, duplicate_window_s=120))
        config = (await js.stream_info(name)).config
    assert not ensured.created
    notes = " ".join(ensured.notes)
    assert "duplicate_window" in notes
    assert "audit.>" in notes
    assert config.duplicate_window == 10.0, "an existing stream is never updated"


@pytest.mark.integration
@pytest.mark.anyio
async def test_subjects_taken_by_another_stream_is_a_config_error(js: JetStreamContext) -> None:
    with anyio.fail_after(10):
        await ensure_stream(js, StreamPolicy(name=unique_name()))
        with pytest.raises(ConfigError, match="refused to create"):
            await ensure_stream(js, StreamPolicy(name=unique_name()))


@pytest.mark.integration
@pytest.mark.anyio
async def test_unreachable_jetstream_is_backend_unavailable(
    nats_server: NatsServerProcess, connect_nats: Any
) -> None:
    async with connect_nats(nats_server.url) as nc:
        nc_js = _js(nc)
        nats_server.stop()
        with anyio.fail_after(10), pytest.raises(BackendUnavailableError, match="did not"):
            await ensure_stream(nc_js, StreamPolicy(name=unique_name()), timeout_s=1.0)


def _js(nc: NATS) -> JetStreamContext:
    return nc.jetstream(timeout=0.3)
