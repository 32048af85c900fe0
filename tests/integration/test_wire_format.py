"""docs/wire-format.md stays true: every header and body field the event store writes is
documented, and the documentation's nats-py consumer reads what the real store appended."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from aggregate.adapters.jetstream import JetStreamEventStore
from aggregate.domain.context import RequestContext
from aggregate.domain.envelopes import CommandRecord, events_from_decision
from aggregate.domain.ids import AggregateKey, uuid7

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def section(title: str) -> str:
    """The text under the heading ``title``, up to the next heading of its level or above."""
    lines = DOC.read_text().splitlines()
    heading = re.compile(r"(#{2,3}) (.*)")
    [(start, level)] = [
        (i, len(m.group(1)))
        for i, line in enumerate(lines)
        if (m := heading.fullmatch(line)) and m.group(2) == title
    ]
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if (m := heading.fullmatch(lines[i])) and len(m.group(1)) <= level
        ),
        len(lines),
    )
    return "\n".join(lines[start:end])


def table_names(text: str) -> set[str]:
    """The `code` names in the first column of the markdown tables of ``text``."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([^`]+)`", line.split(" | ", 1)[0]))
    return names


def record(key: AggregateKey, first_version: int, *types: str) -> CommandRecord:
    return CommandRecord(
        key=key,
        command_id=uuid7(),
        correlation_id="corr-wire",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        first_version=first_version,
        events=events_from_decision(
            [{"type": t, "n": i} for i, t in enumerate(types)], first_version=first_version
        ),
    )


def test_every_header_and_field_written_is_documented() -> None:
    key = AggregateKey("acme", "bank-account", uuid7())
    stored = record(key, 1, "Opened")
    headers = stored.headers(expected_last_seq=0, context=RequestContext.new())
    undocumented = set(headers) - table_names(section("Headers"))
    assert not undocumented, f"headers written but not in docs/wire-format.md: {undocumented}"
    body = stored.to_json()
    fields = table_names(section("Body"))
    documented = {f for name in fields for f in name.split(", ")} | fields
    missing = {k for k in body if k not in documented}
    missing |= {f"events[].{k}" for k in body["events"][0] if f"events[].{k}" not in documented}
    assert not missing, f"body fields written but not in docs/wire-format.md: {missing}"
    assert "tenant.<tenant_id>.aggregate.<aggregate_type>.<aggregate_id>" in DOC.read_text()
    assert key.subject == f"tenant.acme.aggregate.bank-account.{key.aggregate_id}"


def example_code() -> dict[str, Any]:
    [code] = re.findall(r"```python\n(.*?)```", section("Consuming with plain nats-py"), re.S)
    namespace: dict[str, Any] = {"__name__": "wire_format_example"}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace


async def test_the_documented_consumer_reads_what_the_store_appended(
    shared_nc: NATS, event_stream: str
) -> None:
    follow = example_code()["follow"]
    tenant = f"wire{uuid7().hex[:8]}"
    first, second = (
        AggregateKey(tenant, "bank-account", uuid7()),
        AggregateKey(tenant, "ledger", uuid7()),
    )
    seen: list[tuple[str, int, str, dict[str, Any]]] = []
    enough = anyio.Event()

    def handle(body: dict[str, Any], event: dict[str, Any]) -> None:
        seen.append((body["aggregate_id"], event["version"], event["event_type"], event["payload"]))
        if len(seen) == 4:
            enough.set()

    store = JetStreamEventStore(shared_nc, stream=event_stream)
    context = RequestContext.new()
    with anyio.fail_after(30):
        seq = await store.append(
            record(first, 1, "Opened", "Deposited"), expected_last_seq=0, context=context
        )
        await store.append(record(second, 1, "Started"), expected_last_seq=0, context=context)
        await store.append(record(first, 3, "Withdrawn"), expected_last_seq=seq, context=context)
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow, shared_nc, tenant, handle, "wire-test")
            await enough.wait()
            tg.cancel_scope.cancel()
    await store.aclose()
    a, b = str(first.aggregate_id), str(second.aggregate_id)
    assert seen == [
        (a, 1, "Opened", {"n": 0}),
        (a, 2, "Deposited", {"n": 1}),
        (b, 1, "Started", {"n": 0}),
        (a, 3, "Withdrawn", {"n": 0}),
    ]
