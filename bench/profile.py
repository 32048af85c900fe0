"""Where the service spends its CPU: py-spy samples of the running service, summarised.

``record(pid, seconds, out)`` runs ``py-spy record --format raw`` (collapsed stacks: one line
per distinct stack, ``frame;frame;... count``) on the service process while a workload
runs; ``summarise`` turns that into the top functions by *self* samples (where the CPU is
burnt) and by *inclusive* samples (which call on the command path costs what), as
``file:function`` with the share of all non-idle samples. Idle threads (waiting in epoll,
in a lock or in a worker-thread queue) are left out by py-spy by default.

Also runnable on its own: ``python -m bench.profile FILE.txt`` prints the summary of a saved
collapsed-stack file.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

PY_SPY = Path(sys.executable).parent / "py-spy"
_REPO = str(Path(__file__).resolve().parents[1])
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
IDLE_LEAVES = frozenset(
    {
        "selectors.py:EpollSelector.select",
        "trio/_core/_io_epoll.py:EpollIOManager.get_events",
        "trio/_core/_thread_cache.py:WorkerThread._work",
        "concurrent/futures/thread.py:_worker",
        "subprocess.py:Popen._try_wait",
        "threading.py:Condition.wait",
        "threading.py:Thread._wait_for_tstate_lock",
        "queue.py:Queue.get",
    }
)
"""Leaf frames that are a thread waiting (epoll, a job queue, a child process), which
py-spy's ``--nonblocking`` mode does not always recognise as idle; left out of the shares."""


def record(
    pid: int, seconds: float, out: Path, *, rate: int = 200, blocking: bool = True
) -> subprocess.Popen[bytes]:
    """Start py-spy on ``pid`` for ``seconds``; returns the process (wait on it).

    ``--gil``: only samples of the thread holding the GIL, i.e. what the interpreter is
    busy with; the service's Python work is GIL-bound, so these shares are shares of its
    capacity. Blocking mode (py-spy pauses the process for each sample) gives consistent
    stacks; ``blocking=False`` disturbs the workload less but truncates many stacks.
    """
    mode = [] if blocking else ["--nonblocking"]
    return subprocess.Popen(
        [
            str(PY_SPY),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--gil",
            *mode,
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` → ``file.py-relative:func`` (line numbers dropped so
    samples of one function add up)."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3.11/", f"{_REPO}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{match.group('func')}"


def _root(frames: list[str]) -> str:
    """Which thread a stack ran on, by the first frame that tells."""
    for frame in frames:
        if "Island.serve" in frame:
            return "asyncio island thread (gRPC, handler, NATS)"
        if "SqliteSnapshotStore" in frame:
            return "SQLite worker threads (snapshots)"
        if frame.endswith("cli.py:main") or "trio/_core/_run.py:run" in frame:
            return "Trio main thread"
    return "truncated stacks (island coroutines, mostly)"


_OWNERS = (
    ("aggregate/programs/", "Starlark programs (decide/apply)"),
    ("aggregate/adapters/grpc/", "aggregate: gRPC adapter"),
    ("aggregate/adapters/jetstream/", "aggregate: JetStream adapter"),
    ("aggregate/adapters/metrics", "aggregate: metrics"),
    ("aggregate/application/", "aggregate: handler, cache, gate"),
    ("aggregate/domain/", "aggregate: domain (records, history, ids)"),
    ("aggregate/logcontext", "aggregate: log context"),
    ("aggregate/", "aggregate: other"),
    ("grpclib/", "grpclib + h2 + hpack"),
    ("h2/", "grpclib + h2 + hpack"),
    ("hpack/", "grpclib + h2 + hpack"),
    ("nats/", "nats-py"),
    ("prometheus_client/", "prometheus-client"),
    ("anyio/", "anyio"),
    ("trio/", "Trio (main thread, thread cache)"),
    ("outcome/", "Trio (main thread, thread cache)"),
    ("google/protobuf/", "protobuf"),
    ("sqlite_utils/", "snapshots (capture, JSON, SQLite)"),
)
_SNAPSHOT_MARKERS = ("snapshot", "Snapshot")


def _component(frames: list[str]) -> str:
    """The part of the system a sample is charged to: snapshots wherever they appear in
    the stack, else the innermost frame owned by a known package (stdlib frames such as
    json, uuid or socket writes are charged to their caller), else the asyncio loop."""
    if any(m in f for f in frames for m in _SNAPSHOT_MARKERS):
        return "snapshots (capture, JSON, SQLite)"
    roots = [i for i, f in enumerate(frames) if "Island.serve" in f or "_handle_job" in f]
    if roots:  # what runs the island loop or a worker thread is not what it runs
        frames = frames[roots[-1] + 1 :]
    for frame in reversed(frames):
        for prefix, owner in _OWNERS:
            if frame.startswith(prefix):
                return owner
    if any(f.startswith(("asyncio/", "selectors.py")) for f in frames):
        return "asyncio loop + socket I/O"
    return "other"


def summarise(collapsed: str, *, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares of the top functions in a collapsed-stack text.

    Samples whose leaf is a known wait (``IDLE_LEAVES``) are dropped; a function that
    appears several times in one stack (recursion) counts once for the inclusive share.
    ``roots`` are the outermost frames (which thread: the Trio main thread, the asyncio
    island, worker threads).
    """
    self_counts: collections.Counter[str] = collections.Counter()
    components: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    roots: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames or frames[-1] in IDLE_LEAVES:
            continue
        total += count
        roots[_root(frames)] += count
        components[_component(frames)] += count
        self_counts[frames[-1]] += count
        for name in set(frames[1:]):
            incl_counts[name] += count

    def share(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": n, "percent": round(100 * n / total, 1)}
            for name, n in counter.most_common(top)
        ]

    return {
        "samples": total,
        "roots": share(roots) if total else [],
        "components": share(components) if total else [],
        "self": share(self_counts) if total else [],
        "inclusive": share(incl_counts) if total else [],
    }


def format_summary(summary: dict[str, Any], *, top: int = 15) -> str:
    lines = [f"{summary['samples']} non-idle samples"]
    for title, key in (
        ("threads", "roots"),
        ("components", "components"),
        ("self", "self"),
        ("inclusive", "inclusive"),
    ):
        lines.append(f"  top {title}:")
        lines.extend(f"    {row['percent']:5.1f}%  {row['function']}" for row in summary[key][:top])
    return "\n".join(lines)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(name)
        print(format_summary(summarise(Path(name).read_text()), top=30))
