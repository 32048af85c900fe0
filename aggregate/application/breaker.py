"""Circuit breakers around the backends of the command path (DESIGN §13).

A breaker counts consecutive failures of the calls it guards. At ``failure_threshold`` it
opens: for ``open_seconds`` every call is refused at once with ``CircuitOpenError`` (which
carries ``retry_after_ms``), without touching the backend. Then it is half-open: the next
call goes through as a probe (at most ``half_open_probes`` at a time; others are refused as
while open). A probe that succeeds closes the breaker; one that fails opens it again.

A failure is what says the backend is unwell: ``BackendUnavailableError`` and
``TimeoutError``. Every other outcome, business errors included (a version conflict is the
store answering), counts as a success; a cancelled call counts as neither.

The libraries considered (aiobreaker, purgatory, pybreaker, circuitbreaker) are asyncio-only,
Tornado-era or sync-only, and none takes an injected clock; this module is small and driven
by a fake clock in its tests. It is thread-safe (one lock): the snapshot store's breaker is
used from the island and from the Trio thread, and ``status`` is read by the admin server.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aggregate.domain.errors import BackendUnavailableError, CircuitOpenError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

FAILURES: tuple[type[BaseException], ...] = (BackendUnavailableError, TimeoutError)
"""What a breaker counts as a failure of its backend."""


class BreakerState(enum.IntEnum):
    """The metric values of ``aggregate_breaker_state``."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """``failure_threshold`` consecutive failures open the breaker for ``open_seconds``."""

    failure_threshold: int = 5
    open_seconds: float = 0.5
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.half_open_probes < 1 or self.open_seconds <= 0:
            raise ValueError("failure_threshold and half_open_probes >= 1, open_seconds > 0")


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """A breaker as ``/health`` shows it; ``reason`` is the last failure while not closed."""

    name: str
    state: BreakerState
    consecutive_failures: int
    reason: str | None
    retry_after_ms: int

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state.name.lower(),
            "consecutive_failures": self.consecutive_failures,
            "reason": self.reason,
            "retry_after_ms": self.retry_after_ms,
        }


class CircuitBreaker:
    """One breaker; ``guard`` a call with it, or ``check`` before doing work that needs it.

    ``on_transition(name, old, new)`` is called (under the breaker's lock: keep it cheap,
    never raising) whenever the state changes.
    """

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[str, BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self._on_transition = on_transition
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        self._reason: str | None = None

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose time is up reads as half-open)."""
        with self._lock:
            return self._current()

    def status(self) -> BreakerStatus:
        with self._lock:
            state = self._current()
            return BreakerStatus(
                self.name,
                state,
                self._failures,
                None if state is BreakerState.CLOSED else self._reason,
                self._retry_after_ms() if state is BreakerState.OPEN else 0,
            )

    def check(self) -> None:
        """Refuse at once if a call now would be refused (takes no probe slot).

        Raises:
            CircuitOpenError: open, or half-open with every probe slot taken.
        """
        with self._lock:
            state = self._current()
            if state is BreakerState.OPEN or (
                state is BreakerState.HALF_OPEN and self._probes >= self.settings.half_open_probes
            ):
                raise self._refusal()

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run the block as one call through the breaker.

        Raises:
            CircuitOpenError: the breaker refused the call (the block did not run).
        """
        probe = self._enter()
        try:
            yield
        except FAILURES as exc:
            if isinstance(exc, CircuitOpenError):  # a nested breaker's refusal
                self._leave(probe, None)
            else:
                self._leave(probe, f"{type(exc).__name__}: {exc}"[:200])
            raise
        except Exception:
            self._leave(probe, None)
            raise
        except BaseException:  # cancelled: says nothing about the backend
            self._release(probe)
            raise
        self._leave(probe, None)

    # --- internals (called with the lock held unless said otherwise) ---

    def _current(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.settings.open_seconds
        ):
            self._move(BreakerState.HALF_OPEN)
            self._probes = 0
        return self._state

    def _retry_after_ms(self) -> int:
        left = self.settings.open_seconds - (self._clock() - self._opened_at)
        return max(1, math.ceil(left * 1000))

    def _refusal(self) -> CircuitOpenError:
        retry = self._retry_after_ms() if self._state is BreakerState.OPEN else 1
        return CircuitOpenError(
            f"{self.name} is unavailable: its circuit breaker is open after "
            f"{self._failures} consecutive failures (last: {self._reason}); nothing was "
            f"attempted, retry with the same command id after {retry} ms",
            breaker=self.name,
            retry_after_ms=retry,
        )

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old is not new and self._on_transition is not None:
            self._on_transition(self.name, old, new)

    def _enter(self) -> bool:
        """Admit one call (lock taken here). Returns whether it is a half-open probe."""
        with self._lock:
            state = self._current()
            if state is BreakerState.CLOSED:
                return False
            if state is BreakerState.HALF_OPEN and self._probes < self.settings.half_open_probes:
                self._probes += 1
                return True
            raise self._refusal()

    def _release(self, probe: bool) -> None:
        with self._lock:
            if probe and self._state is BreakerState.HALF_OPEN:
                self._probes -= 1

    def _leave(self, probe: bool, failure: str | None) -> None:
        with self._lock:
            if failure is None:
                if probe or self._state is BreakerState.CLOSED:
                    self._failures = 0
                    self._probes = 0
                    self._move(BreakerState.CLOSED)
                return
            self._failures += 1
            self._reason = failure
            if probe or (
                self._state is BreakerState.CLOSED
                and self._failures >= self.settings.failure_threshold
            ):
                self._opened_at = self._clock()
                self._probes = 0
                self._move(BreakerState.OPEN)
