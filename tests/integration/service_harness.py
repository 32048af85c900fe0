"""Run the real service as a separate process (``python -m aggregate.cli serve``), the way
operators run it: its own embedded nats-server, real sockets, real signals.

``start_service`` returns once the service has logged that it serves (its JSON log lines
are read from stderr by a thread); nothing here sleeps to wait.
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
from typing import TYPE_CHECKING, Any

from aggregate.adapters.nats_server import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

READY_TIMEOUT = 60.0


@dataclass
class ServiceProcess:
    proc: subprocess.Popen[str]
    storage: Path
    grpc: tuple[str, int]
    http: tuple[str, int]
    lines: list[dict[str, Any]] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for raw in self.proc.stderr:
                self._queue.put(raw)
        self._queue.put(None)

    def wait_for_log(self, fragment: str, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """The first log line (parsed JSON) whose message contains ``fragment``."""
        for line in self.lines:
            if fragment in str(line.get("message", "")):
                return line
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no log line with {fragment!r}; got {self.text()}")
            try:
                raw = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if raw is None:
                raise RuntimeError(f"service exited ({self.proc.wait()}): {self.text()}")
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"message": raw.rstrip()}
            self.lines.append(line)
            if fragment in str(line.get("message", "")):
                return line

    def text(self) -> str:
        return "\n".join(str(line.get("message")) for line in self.lines[-40:])

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        with contextlib.suppress(TimeoutError, RuntimeError):
            self.wait_for_log("\0never\0", timeout=5)  # read stderr to its end
        return code

    def http_call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://{self.http[0]}:{self.http[1]}{path}", data=data, method=method
        )
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = response.read()
                status = response.status
                kind = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            payload, status, kind = exc.read(), exc.code, exc.headers.get("Content-Type", "")
        if "json" in kind:
            return status, json.loads(payload)
        return status, payload.decode()


def launch_service(
    storage: Path,
    *,
    env: dict[str, str] | None = None,
    example: str | None = "bank",
    grpc_port: int | None = None,
    http_port: int | None = None,
) -> ServiceProcess:
    """Start the service process and return at once (its log lines are read as they come);
    ``example=None`` leaves the manifest to ``env``."""
    grpc_port = grpc_port or free_port()
    http_port = http_port or free_port()
    command = [
        sys.executable,
        "-m",
        "aggregate.cli",
        "serve",
        *(("--example", example) if example else ()),
        "--storage",
        str(storage),
        "--grpc-addr",
        f"127.0.0.1:{grpc_port}",
        "--http-addr",
        f"127.0.0.1:{http_port}",
    ]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATE_")}
    environment.update(env or {})
    proc = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        env=environment,
    )
    service = ServiceProcess(proc, storage, ("127.0.0.1", grpc_port), ("127.0.0.1", http_port))
    threading.Thread(target=service._pump, daemon=True).start()
    return service


def start_service(
    storage: Path, *, env: dict[str, str] | None = None, example: str | None = "bank"
) -> ServiceProcess:
    """Start the service and return once it serves; ``example=None`` leaves the manifest to
    ``env``."""
    service = launch_service(storage, env=env, example=example)
    try:
        service.wait_for_log("serving gRPC on")
    except BaseException:
        service.stop(signal.SIGKILL)
        raise
    return service


@contextlib.contextmanager
def running_service(
    storage: Path, *, env: dict[str, str] | None = None, example: str = "bank"
) -> Iterator[ServiceProcess]:
    service = start_service(storage, env=env, example=example)
    try:
        yield service
    finally:
        if service.proc.poll() is None:
            try:
                service.stop(signal.SIGTERM, timeout=30)
            except subprocess.TimeoutExpired:
                service.stop(signal.SIGKILL)
