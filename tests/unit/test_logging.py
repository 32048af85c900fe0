"""JSON log lines on stderr and on the logger socket (DESIGN §8)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING

import pytest

from aggregate.adapters.logging import (
    LogLevels,
    LogSocketSink,
    configure_logging,
    log_levels,
    reset_logging,
    set_log_levels,
)
from aggregate.logcontext import current_log_fields, log_context

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

log = logging.getLogger("aggregate.test_logging")
WAIT_S = 10.0


@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    reset_logging()
    yield
    reset_logging()


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_lines_are_json_with_the_base_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    log.info("hello %s", "world", extra={"aggregate_type": "account", "count": 3})
    log.debug("below the level")
    (line,) = stderr_lines(capsys)
    assert line["message"] == "hello world"
    assert line["level"] == "info"
    assert line["logger"] == "aggregate.test_logging"
    assert line["aggregate_type"] == "account"
    assert line["count"] == 3
    ts = str(line["ts"])
    assert ts.endswith("Z")
    assert datetime.fromisoformat(ts.replace("Z", "+00:00")).utcoffset() is not None


def test_context_fields_inside_log_context_only(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    with log_context(tenant_id="acme", correlation_id="corr-1", command_id=None):
        log.info("inside")
    log.info("outside")
    inside, outside = stderr_lines(capsys)
    assert inside["tenant_id"] == "acme"
    assert inside["correlation_id"] == "corr-1"
    assert "command_id" not in inside
    assert "tenant_id" not in outside
    assert "correlation_id" not in outside


def test_nested_log_contexts_merge_and_each_exit_restores_the_outer_fields() -> None:
    with log_context(tenant_id="acme", command_id="c-1"):
        with log_context(command_id="c-2", trace_id=None, request_id="r-1"):
            assert current_log_fields() == {
                "tenant_id": "acme",
                "command_id": "c-2",
                "request_id": "r-1",
            }
        assert current_log_fields() == {"tenant_id": "acme", "command_id": "c-1"}
        with pytest.raises(KeyError), log_context(tenant_id="other"):
            raise KeyError("x")
        assert current_log_fields() == {"tenant_id": "acme", "command_id": "c-1"}
    assert current_log_fields() == {}


def test_exceptions_carry_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    try:
        raise KeyError("missing-thing")
    except KeyError:
        log.exception("lookup failed")
    (line,) = stderr_lines(capsys)
    assert line["message"] == "lookup failed"
    assert "Traceback" in str(line["exc"])
    assert "missing-thing" in str(line["exc"])


def test_unserialisable_extras_do_not_break_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    log.info("odd", extra={"thing": object()})
    (line,) = stderr_lines(capsys)
    assert str(line["thing"]).startswith("<object object")


def test_configuring_twice_does_not_double_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    configure_logging("info")
    configure_logging("warning")
    assert len(root.handlers) == before + 1
    log.info("dropped by the new level")
    log.warning("once")
    assert [line["message"] for line in stderr_lines(capsys)] == ["once"]
    reset_logging()
    assert len(root.handlers) == before


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log level 'loud' is unknown"):
        configure_logging("loud")


LIBRARIES = ("hpack.hpack", "h2.connection", "grpclib.server", "nats.aio.client", "asyncio")


def test_library_loggers_stay_at_warning_when_the_service_logs_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("debug")
    for name in LIBRARIES:
        logging.getLogger(name).debug("%s debug", name)
        logging.getLogger(name).info("%s info", name)
    logging.getLogger("hpack.hpack").warning("hpack warning")
    log.debug("our debug")
    logging.getLogger("aggregate").info("our root info")
    assert [line["message"] for line in stderr_lines(capsys)] == [
        "hpack warning",
        "our debug",
        "our root info",
    ]


def test_library_level_lets_their_lines_through(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", library_level="debug")
    logging.getLogger("hpack.hpack").debug("hpack debug")
    log.debug("our debug, below our level")
    assert [line["message"] for line in stderr_lines(capsys)] == ["hpack debug"]


def test_levels_change_at_runtime_and_reset_restores_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = logging.getLogger("aggregate")
    before = (logging.getLogger().level, service.level)
    configure_logging("info")
    assert log_levels() == LogLevels("info", "warning")
    log.debug("hidden")
    assert set_log_levels(level="debug") == LogLevels("debug", "warning")
    log.debug("shown")
    logging.getLogger("nats.aio.client").info("hidden nats")
    assert set_log_levels(library_level="info") == LogLevels("debug", "info")
    logging.getLogger("nats.aio.client").info("shown nats")
    with pytest.raises(ValueError, match="log level 'loud' is unknown"):
        set_log_levels(level="warning", library_level="loud")
    assert log_levels() == LogLevels("debug", "info")  # nothing changed by a refusal
    assert [line["message"] for line in stderr_lines(capsys)] == ["shown", "shown nats"]
    reset_logging()
    assert (logging.getLogger().level, service.level) == before


class LineServer:
    """A Unix stream socket server on a thread that collects newline-delimited lines."""

    def __init__(self, path: Path, *, close_after_first: bool = False) -> None:
        self.path = path
        self.lines: list[dict[str, object]] = []
        self.connections = 0
        self.changed = threading.Condition()
        self._close_after_first = close_after_first
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self.changed:
                self.connections += 1
            with conn:
                buffer = b""
                while chunk := conn.recv(65536):
                    buffer += chunk
                    *complete, buffer = buffer.split(b"\n")
                    with self.changed:
                        self.lines.extend(json.loads(line) for line in complete)
                        self.changed.notify_all()
                    if complete and self._close_after_first:
                        self._close_after_first = False
                        break

    def wait_for(self, count: int, logger: str | None = None) -> bool:
        def enough() -> bool:
            lines = [x for x in self.lines if logger is None or x.get("logger") == logger]
            return len(lines) >= count

        with self.changed:
            return self.changed.wait_for(enough, WAIT_S)

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(WAIT_S)


@pytest.fixture
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp paths can be longer.
    return tmp_path_factory.mktemp("sock") / "log.sock"


def test_lines_reach_the_logger_socket(socket_path: Path) -> None:
    server = LineServer(socket_path)
    try:
        setup = configure_logging("info", socket_path)
        assert setup.socket is not None
        with log_context(tenant_id="acme"):
            for i in range(3):
                log.info("line %d", i)
        assert server.wait_for(3, logger=log.name)
        # Threads left by earlier tests may log too: look at this test's logger only.
        ours = [line for line in server.lines if line["logger"] == log.name]
        assert [line["message"] for line in ours] == ["line 0", "line 1", "line 2"]
        assert all(line["tenant_id"] == "acme" for line in ours)
        assert setup.socket.wait_idle(WAIT_S)  # counters settle after the last send
        assert setup.socket.sent >= 3
        assert setup.socket.dropped == 0
    finally:
        reset_logging()
        server.close()


def test_absent_socket_drops_and_counts_without_failing(
    socket_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = configure_logging("info", socket_path)
    assert setup.socket is not None
    for i in range(3):
        log.info("nobody listens %d", i)
    assert setup.socket.wait_idle(WAIT_S)
    assert setup.socket.dropped == 3
    assert setup.socket.sent == 0
    # stderr still gets every line.
    assert len(stderr_lines(capsys)) == 3


def test_absent_socket_with_long_backoff_drops_without_blocking(socket_path: Path) -> None:
    sink = LogSocketSink(socket_path, queue_size=1, backoff_initial_s=60)
    sink.setFormatter(logging.Formatter())
    logger = logging.getLogger("aggregate.test_logging.absent")
    logger.propagate = False
    logger.addHandler(sink)
    try:
        for i in range(200):
            logger.warning("burst %d", i)
        assert sink.wait_idle(WAIT_S)
        assert sink.dropped == 200
        assert not sink.connected
    finally:
        logger.removeHandler(sink)
        logger.propagate = True
        sink.close()


def test_a_peer_that_never_reads_costs_lines_not_progress(socket_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen()
    sink = LogSocketSink(socket_path, queue_size=4, send_timeout_s=0.05, backoff_initial_s=60)
    sink.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("aggregate.test_logging.slow")
    logger.propagate = False
    logger.addHandler(sink)
    try:
        # Far more than the socket buffers hold: the writer times out, the queue fills,
        # and emit keeps returning.
        for _ in range(2000):
            logger.warning("x" * 4096)
        assert sink.wait_idle(WAIT_S)
        assert sink.dropped > 0
        assert sink.sent + sink.dropped == 2000
    finally:
        logger.removeHandler(sink)
        logger.propagate = True
        sink.close()
        listener.close()


def test_sink_reconnects_after_the_peer_goes_away(socket_path: Path) -> None:
    server = LineServer(socket_path, close_after_first=True)
    sink = LogSocketSink(socket_path, backoff_initial_s=0.01, backoff_max_s=0.05)
    sink.setFormatter(logging.Formatter("%(message)s"))
    sink.setLevel(logging.INFO)
    logger = logging.getLogger("aggregate.test_logging.reconnect")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(sink)
    try:
        logger.info('"first"')
        assert server.wait_for(1)
        # The server hung up after the first line: keep logging until a line arrives on
        # a second connection (lines written into the dead one are lost, and counted).
        delivered = False
        deadline = time.monotonic() + WAIT_S
        i = 0
        while not delivered and time.monotonic() < deadline:
            i += 1
            logger.info('"again %d"', i)
            assert sink.wait_idle(WAIT_S)
            with server.changed:
                delivered = server.changed.wait_for(lambda: len(server.lines) >= 2, 0.01)
        assert delivered
        assert server.connections == 2
        assert sink.dropped >= 1
    finally:
        logger.removeHandler(sink)
        logger.propagate = True
        sink.close()
        server.close()


def test_lines_after_close_are_dropped(socket_path: Path) -> None:
    sink = LogSocketSink(socket_path)
    sink.setFormatter(logging.Formatter())
    sink.close()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "late", None, None)
    sink.handle(record)
    assert sink.dropped == 1
