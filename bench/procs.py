"""Processes of a benchmark run: the service under test, workload clients, /proc readings.

Everything here is synchronous and runs in ``bench/run.py``'s process. The service is the
real ``aggregate serve`` (embedded nats-server as its child); clients (the load generator,
the raw-publish baseline) are separate processes that speak a tiny line protocol on stdout:
``START`` when the measured window opens, ``END`` when it closes, then ``RESULT <json>``.
The runner samples CPU counters at ``START`` and ``END`` so server CPU is charged to exactly
the commands counted in the window.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregate.adapters.nats_server import free_port, terminate

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
AGGREGATE_BIN = Path(sys.executable).parent / "aggregate"
CLK_TCK = os.sysconf("SC_CLK_TCK")

CpuSample = dict[str, float]
"""CPU seconds (user + system) per role, e.g. ``{"service": 1.2, "nats": 0.4}``."""


# ---- /proc readings --------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from "state" on


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0.0 once it is gone."""
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (scans /proc; a benchmark has few processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry.name))[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body of a GET; ``(0, reason)`` when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def metric_total(text: str, name: str) -> float:
    """Sum of every sample of metric ``name`` (all label sets) in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---- the service under test ------------------------------------------------------------
@dataclass
class ServiceProcess:
    """One ``aggregate serve`` with an embedded nats-server, loopback only."""

    storage: Path
    manifest: Path
    env: Mapping[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    grpc_port: int = 0
    http_port: int = 0
    _proc: subprocess.Popen[bytes] | None = None
    _children: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the service is not running")
        return self._proc.pid

    def start(self, timeout: float = 90.0) -> None:
        """Start it and wait until ``/ready`` answers 200.

        Raises:
            RuntimeError: it exited or was not ready within ``timeout`` (its log is named).
        """
        self.grpc_port, self.http_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATE_")}
        env.update(
            {
                "AGGREGATE_MANIFEST_PATH": str(self.manifest),
                "AGGREGATE_LOG_LEVEL": "warning",
            }
        )
        env.update(self.env)
        self.storage.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or self.storage.with_name(self.storage.name + ".log")
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [
                    str(AGGREGATE_BIN),
                    "serve",
                    "--storage",
                    str(self.storage),
                    "--grpc-addr",
                    f"127.0.0.1:{self.grpc_port}",
                    "--http-addr",
                    f"127.0.0.1:{self.http_port}",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"the service exited with {self._proc.returncode}; see {log_path}"
                )
            if http_get(self.url("/ready"), timeout=1.0)[0] == 200:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the service was not ready in {timeout:.0f} s; see {log_path}")
            time.sleep(0.05)
        self._children = child_pids(self._proc.pid)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def cpu(self) -> CpuSample:
        """CPU seconds of the service process, its nats-server and its other children."""
        sample = {"service": cpu_seconds(self.pid), "nats": 0.0, "workers": 0.0}
        for child in child_pids(self.pid):
            role = "nats" if process_name(child).startswith("nats-server") else "workers"
            sample[role] += cpu_seconds(child)
        return sample

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def metric(self, name: str) -> float:
        status, text = http_get(self.url("/metrics"))
        if status != 200:
            raise RuntimeError(f"GET /metrics answered {status}: {text[:200]}")
        return metric_total(text, name)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (a graceful drain: snapshots flushed); SIGKILL after ``timeout``; then
        kill any child it left behind (only the pids it had started)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        children = self._children or child_pids(proc.pid)
        code = terminate(proc, timeout)
        for child in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)
        return code


# ---- workload clients ------------------------------------------------------------------
def run_client(
    module: str,
    spec: Mapping[str, Any],
    *,
    on_start: Callable[[], object] | None = None,
    on_end: Callable[[], object] | None = None,
    timeout: float,
    args: Sequence[str] = (),
) -> dict[str, Any]:
    """Run ``python -m <module> [args]`` with ``spec`` (JSON on stdin); its ``RESULT``.

    ``on_start``/``on_end`` run when the client opens/closes its measured window; what they
    return is stored in the result under ``"at_start"``/``"at_end"``.

    Raises:
        RuntimeError: the client failed, or did not finish within ``timeout`` (it is killed).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdin.write(json.dumps(spec))
    proc.stdin.close()
    lines: queue.Queue[str | None] = queue.Queue()
    errors: list[str] = []

    def pump_out() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def pump_err() -> None:
        assert proc.stderr is not None
        errors.extend(proc.stderr)

    threads = [threading.Thread(target=f, daemon=True) for f in (pump_out, pump_err)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    marks: dict[str, object] = {}
    result: dict[str, Any] | None = None
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{module} did not finish in {timeout:.0f} s") from None
            if line is None:
                break
            if line == "START":
                marks["at_start"] = on_start() if on_start else None
            elif line == "END":
                marks["at_end"] = on_end() if on_end else None
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT ") :])
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for thread in threads:
            thread.join(timeout=5)
    if proc.returncode != 0 or result is None:
        tail = "".join(errors)[-2000:]
        raise RuntimeError(f"{module} failed (exit {proc.returncode}):\n{tail}")
    result.update(marks)
    return result
