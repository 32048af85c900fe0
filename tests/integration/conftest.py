"""Fixtures for integration tests: real nats-server nodes and clusters on loopback.

Every process a fixture starts is stopped by its finalizer, even when the test fails.
Servers use free loopback ports and per-test (or per-module) temporary store directories.

- ``nats_server``: a fresh single node for one test (kill/restart it freely).
- ``shared_nats_server``: one node for the whole session; tests on it must leave no stream
  behind (the ``jetstream_stream`` fixture in the JetStream tests deletes its own), since
  two streams cannot capture the same subjects.
- ``nats_cluster``: three clustered nodes for one test module (R3 streams, leader kills);
  a test that kills a node restarts it before it ends.
- ``connect_nats``: opens nats-py clients that reconnect fast and stay quiet on stderr.
- ``shared_nc``: one such client on ``shared_nats_server`` for one (anyio) test;
  ``event_stream``: a fresh event stream (the service's subjects) on that node, deleted
  after the test.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import nats
import pytest

from aggregate.adapters.jetstream import StreamPolicy, ensure_stream
from aggregate.adapters.nats_server import NatsCluster, NatsServerProcess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

    from nats.aio.client import Client as NATS

    OpenNats = Callable[..., AbstractAsyncContextManager[NATS]]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServerProcess]:
    """A single JetStream node owned by one test."""
    node = NatsServerProcess(store_dir=tmp_path / "nats", name="test-node")
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def shared_nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServerProcess]:
    """One JetStream node shared by the session's cheap tests."""
    node = NatsServerProcess(store_dir=tmp_path_factory.mktemp("shared-nats"), name="shared")
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A three-node JetStream cluster shared by one test module."""
    cluster = NatsCluster(base_dir=tmp_path_factory.mktemp("nats-cluster"), size=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


async def _quiet_error_cb(exc: Exception) -> None:
    # Disconnects are what the fault tests cause on purpose; the tests check outcomes.
    return None


@contextlib.asynccontextmanager
async def open_nats(servers: str | list[str], **options: Any) -> AsyncIterator[NATS]:
    """A nats-py client that reconnects quickly and forever; closed on exit."""
    settings: dict[str, Any] = {
        "reconnect_time_wait": 0.1,
        "max_reconnect_attempts": -1,
        "connect_timeout": 2,
        "allow_reconnect": True,
        "error_cb": _quiet_error_cb,
    }
    settings.update(options)
    nc = await nats.connect(servers, **settings)
    try:
        yield nc
    finally:
        if not nc.is_closed:
            # nats-py's close() flushes the socket and raises when the server is gone.
            with contextlib.suppress(OSError):
                await nc.close()


@pytest.fixture
def connect_nats() -> OpenNats:
    """``async with connect_nats(urls) as nc:`` opens a test client (see ``open_nats``)."""
    return open_nats


@pytest.fixture
async def shared_nc(
    shared_nats_server: NatsServerProcess, connect_nats: OpenNats
) -> AsyncIterator[NATS]:
    """A client of the shared node for one test (needs an ``anyio_backend`` of asyncio)."""
    async with connect_nats(shared_nats_server.url) as client:
        yield client


@pytest.fixture
async def event_stream(shared_nc: NATS) -> AsyncIterator[str]:
    """A fresh event stream on the shared node (``StreamPolicy`` defaults, so it captures
    the service's subjects), deleted after the test."""
    name = f"STORE_{uuid.uuid4().hex[:12]}"
    js = shared_nc.jetstream(timeout=5)
    await ensure_stream(js, StreamPolicy(name=name))
    try:
        yield name
    finally:
        await js.delete_stream(name)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fuzz suite's tally (statuses per input class), when fuzz tests ran."""
    import sys

    support = sys.modules.get("tests.integration.fuzz_support")
    lines = support.tally_summary() if support is not None else []
    if lines:
        terminalreporter.section("fuzz tally")
        for line in lines:
            terminalreporter.write_line(line)
