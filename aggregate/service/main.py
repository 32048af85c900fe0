"""``aggregate serve``: one ``trio.run``, signals, exit code (DESIGN §3 Shutdown)."""

from __future__ import annotations

import logging
import os
import signal
from typing import TYPE_CHECKING

import trio

from aggregate.domain.errors import AggregateError
from aggregate.service.app import Service

if TYPE_CHECKING:
    from collections.abc import Callable

    from aggregate.config import Settings

log = logging.getLogger(__name__)


async def serve(settings: Settings, log_drops: Callable[[], float] | None = None) -> int:
    """Run the service until SIGTERM or SIGINT; 0 after a clean drain, 1 otherwise.

    A second signal forces an immediate exit (the embedded nats-server is killed first)."""
    service = Service(settings)
    if log_drops is not None:
        service.metrics.set_log_drops_source(log_drops)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                count = 0
                async for signum in signals:
                    count += 1
                    if count == 1:
                        log.info("%s received: draining", signal.Signals(signum).name)
                        service.request_shutdown()
                    else:
                        log.error("second signal: exiting now")
                        if service.embedded is not None:
                            service.embedded.server.kill()
                        os._exit(128 + signum)

            nursery.start_soon(watch_signals)
            await service.run()
            nursery.cancel_scope.cancel()
    return 0 if service.clean_drain else 1


def run(settings: Settings, log_drops: Callable[[], float] | None = None) -> int:
    """``serve`` in a fresh Trio run.

    Raises:
        AggregateError: start-up failed (``ConfigError``, ``BackendUnavailableError``, ...):
            the one error, out of the task groups' exception groups it travelled through.
    """
    try:
        return trio.run(serve, settings, log_drops)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1 and isinstance(leaves[0], AggregateError):
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
