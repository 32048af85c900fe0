"""``aggregate serve``: one ``trio.run``, signals, exit code.

A first SIGTERM or SIGINT drains a serving service, or abandons a start-up in progress; a
second one exits at once. SIGHUP reloads the programs (``aggregate.service.programs``).
Start-up errors leave ``trio.run`` wrapped in the exception groups of the nurseries they
crossed; ``run`` hands the caller the error itself.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import TYPE_CHECKING

import trio

from aggregate.domain.errors import AggregateError
from aggregate.service.app import Service
from aggregate.service.programs import reload_on_signal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from aggregate.config import Settings

log = logging.getLogger(__name__)


async def serve(settings: Settings, log_drops: Callable[[], float] | None = None) -> int:
    """Run the service until SIGTERM or SIGINT; 0 after a clean drain (or a start-up
    abandoned by the signal), 1 otherwise.

    A second signal forces an immediate exit (the embedded nats-server is killed first)."""
    service = Service(settings)
    if log_drops is not None:
        service.metrics.set_log_drops_source(log_drops)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                count = 0
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        nursery.start_soon(reload_on_signal, service)
                        continue
                    count += 1
                    if count == 1:
                        what = "draining" if service.state == "serving" else "stopping"
                        log.info("%s received: %s", signal.Signals(signum).name, what)
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
    """``serve`` in a new Trio run; the exit code.

    Raises:
        AggregateError: start-up failed (ConfigError, BackendUnavailableError, ...): the
            error itself, not the exception groups around it, when it is the only failure.
    """
    try:
        return trio.run(serve, settings, log_drops)
    except BaseExceptionGroup as group:
        cause = sole_error(group)
        if cause is None:
            raise
        raise cause from None


def sole_error(group: BaseExceptionGroup[BaseException]) -> AggregateError | None:
    """The first ``AggregateError`` in ``group`` when every error in it is one (a failed
    start-up, possibly with follow-on failures of the same kind); else None."""
    leaves = list(_leaves(group))
    if leaves and all(isinstance(leaf, AggregateError) for leaf in leaves):
        first = leaves[0]
        assert isinstance(first, AggregateError)
        return first
    return None


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
