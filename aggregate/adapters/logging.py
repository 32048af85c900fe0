"""Structured logs: JSON lines on stderr, and to a Unix socket when one is set (DESIGN §8).

Every line is one JSON object: ``ts`` (RFC 3339 UTC), ``level``, ``logger``, ``message``,
the request context bound with ``aggregate.logcontext.log_context`` (tenant_id,
correlation_id, trace_id, command_id, request_id, ...), the record's ``extra=`` fields, and
``exc`` (the formatted traceback) when there is one.

Two levels: the service's own loggers (``aggregate.*``, ``AGGREGATE_LOG_LEVEL``) and every
other logger (``AGGREGATE_LIBRARY_LOG_LEVEL``, default warning): the libraries' debug lines
(hpack's carry header values) only appear when asked for. Both can change at runtime
(``set_log_levels``, behind ``POST /admin/log-level``).

With ``AGGREGATE_LOGGER_SOCKET`` set the same lines also go to that Unix stream socket
(newline-delimited JSON, for edge-logger-client). That path must never slow down or break
the service: lines are queued (bounded) and written by a background thread; when the
socket is absent, refuses, or its reader is too slow, lines are dropped and counted, and
the thread reconnects with exponential backoff and jitter.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aggregate.logcontext import current_log_fields

if TYPE_CHECKING:
    from pathlib import Path
    from typing import TextIO

SERVICE_LOGGER = "aggregate"
"""The service's own loggers are this one and its children; every other logger is a
library's and follows the root logger's level."""

_LINE_ATTR = "_aggregate_json_line"
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    _LINE_ATTR,
}


def _rfc3339(created: float) -> str:
    moment = datetime.fromtimestamp(created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


class JsonLineFormatter(logging.Formatter):
    """Formats a record as one JSON object (no newline).

    The context fields are read when the record is formatted, which happens in the task
    that logged it (handlers run synchronously). The line is cached on the record so the
    stderr handler and the socket sink format it once.
    """

    def format(self, record: logging.LogRecord) -> str:
        cached = record.__dict__.get(_LINE_ATTR)
        if isinstance(cached, str):
            return cached
        entry: dict[str, object] = {
            "ts": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in current_log_fields().items():
            entry.setdefault(name, value)
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRS and not name.startswith("_"):
                entry.setdefault(name, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        line = json.dumps(entry, default=repr, ensure_ascii=False, separators=(",", ":"))
        record.__dict__[_LINE_ATTR] = line
        return line


class LogSocketSink(logging.Handler):
    """Sends JSON lines to a Unix stream socket from a background thread.

    ``emit`` never blocks: a full queue drops the line. The thread connects lazily, writes
    with ``send_timeout_s`` (a reader slower than that loses its connection and the line),
    and after a failure drops lines until the backoff (``backoff_initial_s`` doubling up to
    ``backoff_max_s``, with jitter) has passed, then reconnects. ``dropped`` counts every
    line not delivered.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        queue_size: int = 10_000,
        send_timeout_s: float = 1.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        super().__init__()
        self.path = str(path)
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=queue_size)
        self._send_timeout_s = send_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._backoff_s = backoff_initial_s
        self._next_attempt = 0.0
        self._sock: socket.socket | None = None
        self._counts = threading.Condition()
        self._queued = 0
        self._handled = 0
        self._dropped = 0
        self._sent = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"log-socket {self.path}", daemon=True
        )
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Lines not delivered: queue full, socket absent or refusing, or a write failed."""
        return self._dropped

    @property
    def sent(self) -> int:
        """Lines written to the socket."""
        return self._sent

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if self._stopping.is_set():
            self._count(dropped=1)
            return
        with self._counts:
            try:
                self._queue.put_nowait(line)
            except queue.Full:
                self._dropped += 1
            else:
                self._queued += 1

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued line was sent or dropped; False on timeout.

        For tests and for a best-effort flush before exit; blocks the calling thread.
        """
        with self._counts:
            return self._counts.wait_for(lambda: self._handled == self._queued, timeout)

    def close(self, timeout: float = 1.0) -> None:
        """Flush for up to ``timeout`` seconds, then stop the thread and close the socket.

        Lines logged afterwards are dropped (counted).
        """
        if not self._stopping.is_set():
            self.wait_idle(timeout)
            self._stopping.set()
            # When the queue is full, the thread sees ``_stopping`` after its current line.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
            self._thread.join(timeout)
        super().close()

    def _count(self, *, dropped: int = 0, sent: int = 0, handled: int = 0) -> None:
        with self._counts:
            self._dropped += dropped
            self._sent += sent
            self._handled += handled
            if handled:
                self._counts.notify_all()

    def _run(self) -> None:
        while not self._stopping.is_set():
            line = self._queue.get()
            if line is None:
                break
            delivered = self._deliver(line)
            self._count(dropped=0 if delivered else 1, sent=1 if delivered else 0, handled=1)
        self._disconnect()
        with self._counts:
            # Lines still queued at stop are dropped; settle the counts so waits end.
            while True:
                try:
                    rest = self._queue.get_nowait()
                except queue.Empty:
                    break
                if rest is not None:
                    self._dropped += 1
                    self._handled += 1
            self._counts.notify_all()

    def _deliver(self, line: str) -> bool:
        sock = self._sock or self._connect()
        if sock is None:
            return False
        try:
            sock.sendall(line.encode() + b"\n")
        except OSError:
            self._disconnect()
            self._schedule_retry()
            return False
        return True

    def _connect(self) -> socket.socket | None:
        if time.monotonic() < self._next_attempt:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._send_timeout_s)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            self._schedule_retry()
            return None
        self._sock = sock
        self._backoff_s = self._backoff_initial_s
        return sock

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _schedule_retry(self) -> None:
        delay = self._backoff_s * random.uniform(0.5, 1.0)
        self._next_attempt = time.monotonic() + delay
        self._backoff_s = min(self._backoff_s * 2, self._backoff_max_s)


@dataclass(frozen=True, slots=True)
class LoggingSetup:
    """What ``configure_logging`` installed on the root logger, and the levels it replaced
    (the root logger's and the service logger's)."""

    stderr: logging.Handler
    socket: LogSocketSink | None
    previous_level: int
    previous_service_level: int


@dataclass(frozen=True, slots=True)
class LogLevels:
    """The two levels in force, as lower-case names."""

    level: str
    """The service's own loggers (``aggregate.*``)."""
    library_level: str
    """Every other logger (the root logger's level)."""

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "library_level": self.library_level}


_installed: LoggingSetup | None = None
_install_lock = threading.Lock()


def configure_logging(
    level: str | int,
    socket_path: str | Path | None = None,
    *,
    library_level: str | int = "warning",
    stream: TextIO | None = None,
) -> LoggingSetup:
    """Send every log record as a JSON line to stderr (or ``stream``), and to
    ``socket_path`` when set; the service's loggers at ``level``, all others at
    ``library_level``. Replaces what an earlier call installed (idempotent: handlers are
    never doubled).

    Raises:
        ValueError: ``level`` or ``library_level`` is not a logging level name or number.
    """
    global _installed
    numeric = _level_number(level)
    library = _level_number(library_level)
    formatter = JsonLineFormatter()
    with _install_lock:
        previous = _uninstall()
        root = logging.getLogger()
        service = logging.getLogger(SERVICE_LOGGER)
        stderr = logging.StreamHandler(stream if stream is not None else sys.stderr)
        stderr.setFormatter(formatter)
        sink = LogSocketSink(socket_path) if socket_path is not None else None
        if sink is not None:
            sink.setFormatter(formatter)
        before = previous or (root.level, service.level)
        setup = LoggingSetup(stderr, sink, *before)
        root.addHandler(stderr)
        if sink is not None:
            root.addHandler(sink)
        root.setLevel(library)
        service.setLevel(numeric)
        _installed = setup
        return setup


def reset_logging() -> None:
    """Remove what ``configure_logging`` installed, close the socket sink (flushing it for
    up to a second) and restore the root and service loggers' levels."""
    with _install_lock:
        previous = _uninstall()
        if previous is not None:
            logging.getLogger().setLevel(previous[0])
            logging.getLogger(SERVICE_LOGGER).setLevel(previous[1])


def log_levels() -> LogLevels:
    """The levels in force now."""
    service = logging.getLogger(SERVICE_LOGGER).getEffectiveLevel()
    return LogLevels(_level_name(service), _level_name(logging.getLogger().level))


def set_log_levels(level: str | None = None, library_level: str | None = None) -> LogLevels:
    """Change the service's level, the libraries' level, or both, at once and for the whole
    process; returns the levels now in force. Safe to call from any thread.

    Raises:
        ValueError: a level name is unknown (then neither level changes).
    """
    numeric = _level_number(level) if level is not None else None
    library = _level_number(library_level) if library_level is not None else None
    with _install_lock:
        if numeric is not None:
            logging.getLogger(SERVICE_LOGGER).setLevel(numeric)
        if library is not None:
            logging.getLogger().setLevel(library)
        return log_levels()


def _uninstall() -> tuple[int, int] | None:
    """Remove the installed handlers; the root and service levels from before the first
    install."""
    global _installed
    setup, _installed = _installed, None
    if setup is None:
        return None
    root = logging.getLogger()
    root.removeHandler(setup.stderr)
    setup.stderr.close()
    if setup.socket is not None:
        root.removeHandler(setup.socket)
        setup.socket.close()
    return setup.previous_level, setup.previous_service_level


def _level_name(number: int) -> str:
    name = logging.getLevelName(number)
    return name.lower() if isinstance(name, str) else str(number)


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.strip().upper())
    if not isinstance(number, int):
        raise ValueError(
            f"log level {level!r} is unknown: use debug, info, warning, error or critical"
        )
    return number
