"""Client CPU per conditional JetStream publish: ``AckedPublisher`` against nats-py's
``JetStreamContext.publish``, interleaved, on an embedded nats-server.

    .venv/bin/python bench/publish_bench.py [--rounds 4] [--lanes 64] [--per-lane 150]

Each lane publishes to its own subject with ``Nats-Expected-Last-Subject-Sequence`` and a
``Nats-Msg-Id`` and 12 headers in all (the shape of the event store's appends), waiting
for each acknowledgement before its next publish; all lanes run at once on one connection.
Prints, per round, the process CPU time per publish and the publish rate of each way, then
the medians and their ratio. Everything runs in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats

from aggregate.adapters.jetstream.publisher import AckedPublisher
from aggregate.adapters.nats_server import NatsServerProcess

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

HEADERS = {f"x-header-{i}": "01a2096b-86fb-72e1-a6b3-0d59aaf02f7e" for i in range(10)}
PAYLOAD = b'{"events":[{"type":"MoneyDeposited","amount":1}]}'


async def measure(
    publish: Callable[[str, dict[str, str]], Awaitable[int]], tag: str, lanes: int, per_lane: int
) -> tuple[float, float]:
    """(µs of CPU per publish, publishes per second) of ``lanes`` concurrent lanes."""

    async def lane(index: int) -> None:
        last = 0
        for n in range(per_lane):
            headers = dict(HEADERS)
            headers["Nats-Expected-Last-Subject-Sequence"] = str(last)
            headers["Nats-Msg-Id"] = f"{tag}.{index}.{n}"
            last = await publish(f"bench.{tag}.{index}", headers)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(lane(i) for i in range(lanes)))
    count = lanes * per_lane
    return (time.process_time() - cpu) / count * 1e6, count / (time.perf_counter() - wall)


async def main_async(rounds: int, lanes: int, per_lane: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="aggregate-publish-bench-"))
    server = NatsServerProcess(store_dir=workdir, name="publish-bench")
    server.start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream(timeout=10)
        await js.add_stream(name="BENCH", subjects=["bench.>"])
        ours = AckedPublisher(nc)

        async def with_nats_py(subject: str, headers: dict[str, str]) -> int:
            return (await js.publish(subject, PAYLOAD, headers=headers)).seq

        async def with_acked_publisher(subject: str, headers: dict[str, str]) -> int:
            return (await ours.publish(subject, PAYLOAD, headers=headers, ack_wait_s=10)).seq

        results: dict[str, list[tuple[float, float]]] = {"nats-py": [], "AckedPublisher": []}
        ways = [("nats-py", with_nats_py), ("AckedPublisher", with_acked_publisher)]
        for number in range(rounds):
            for name, way in ways if number % 2 == 0 else ways[::-1]:
                cpu_us, rate = await measure(way, f"r{number}{name[0]}", lanes, per_lane)
                results[name].append((cpu_us, rate))
                print(
                    f"round {number + 1} {name:15} {cpu_us:6.1f} µs CPU/publish {rate:8.0f}/s",
                    flush=True,
                )
        medians = {name: statistics.median(c for c, _ in r) for name, r in results.items()}
        print("\n| way | µs CPU per publish (median) | publishes/s (median) |\n|---|---|---|")
        for name, r in results.items():
            print(f"| {name} | {medians[name]:.1f} | {statistics.median(x for _, x in r):.0f} |")
        print(
            f"\nAckedPublisher / nats-py CPU: {medians['AckedPublisher'] / medians['nats-py']:.2f}"
        )
        await ours.aclose()
        await nc.close()
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--lanes", type=int, default=64)
    parser.add_argument("--per-lane", type=int, default=150)
    args = parser.parse_args(argv)
    asyncio.run(main_async(max(1, args.rounds), max(1, args.lanes), max(1, args.per_lane)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
