"""JetStream sources: a subject of a stream, each message one JSON ``UsageBatch``.

One durable pull consumer per source (``ingest_<tenant>_<source>``, explicit acks): this is
ingestion, not the command path, so a consumer is the right tool. A message is acknowledged
only after every record in it is charged, so a run killed half-way leaves it unacknowledged
and it comes again (its records already charged are answered ``already charged``). A
malformed message halts the source: it and the messages fetched after it are handed back
(nak, in order) and the error names its stream sequence; the source stays halted on it until
the message is removed from the stream (``nats stream rmm``), after which the next run goes on.
A consumer with nothing pending is skipped without fetching.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import anyio
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from aggregate.domain.errors import BackendUnavailableError
from aggregate.ingest.charge import utc_now
from aggregate.ingest.progress import SourceError
from aggregate.ingest.records import BadRecordError, ParsedBatch, parse_batch

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from aggregate.ingest.charge import SourceRun

log = logging.getLogger(__name__)
FETCH_BATCH = 64


@dataclass(frozen=True, slots=True)
class JetStreamSource:
    """One configured JetStream source, resolved to its tenant."""

    tenant_id: str
    name: str
    stream: str
    subject: str
    kind: str = "jetstream"

    @property
    def durable(self) -> str:
        return f"ingest_{self.tenant_id}_{self.name}"


async def run_jetstream(source: JetStreamSource, run: SourceRun, nc: Client) -> None:
    """Consume what is pending for ``source``; the outcome is in ``run.report``.

    Raises:
        BackendUnavailableError: the stream or consumer cannot be reached.
        AggregateError: a charge failed for a reason other than a bad record.
    """
    options = run.charger.options
    js = nc.jetstream(timeout=options.fetch_timeout_s * 2)
    config = ConsumerConfig(
        durable_name=source.durable,
        filter_subject=source.subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=options.ack_wait_s,
        max_ack_pending=FETCH_BATCH * 4,
        description=f"aggregate usage ingestion of {source.subject}",
    )
    try:
        with anyio.fail_after(options.fetch_timeout_s * 4):
            info = await js.add_consumer(source.stream, config)
            sub = await js.pull_subscribe_bind(source.durable, source.stream)
    except (TimeoutError, nats.errors.Error) as exc:
        raise BackendUnavailableError(
            f"JetStream source {source.name}: stream {source.stream!r} or its consumer is not "
            f"reachable ({type(exc).__name__})"
        ) from None
    try:
        if info.num_pending == 0 and info.num_ack_pending == 0 and run.progress.last_error is None:
            run.report.status = "skipped"
            return
        await _consume(source, run, sub)
    finally:
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(2),
            contextlib.suppress(nats.errors.Error),
        ):
            await sub.unsubscribe()  # the durable consumer stays; only our interest goes


async def _consume(source: JetStreamSource, run: SourceRun, sub: object) -> None:
    options = run.charger.options
    while True:
        try:
            messages: list[Msg] = await sub.fetch(  # type: ignore[attr-defined]
                FETCH_BATCH, timeout=options.fetch_timeout_s
            )
        except (TimeoutError, nats.errors.TimeoutError):
            break
        except nats.errors.Error as exc:
            raise BackendUnavailableError(
                f"JetStream source {source.name}: fetch failed ({type(exc).__name__})"
            ) from None
        for position, msg in enumerate(messages):
            seq = msg.metadata.sequence.stream
            if len(msg.data) > options.max_file_bytes:
                parsed = ParsedBatch(
                    [],
                    BadRecordError(
                        f"the message is larger than {options.max_file_bytes} bytes "
                        "(AGGREGATE_INGEST_MAX_FILE_BYTES)"
                    ),
                )
            else:
                parsed = parse_batch(
                    msg.data,
                    fmt="json",
                    source_node=source.name,
                    max_records=options.max_records_per_batch,
                )
            try:
                _, refused = await run.charge_all(parsed.records, 0, where=f"sequence {seq}")
            except BaseException:
                await _hand_back(messages[position:])
                raise
            error = refused or parsed.error
            if error is not None:
                await _hand_back(messages[position:])
                run.halt(
                    SourceError(
                        error.message, stream_seq=seq, record_index=error.index, at=utc_now()
                    )
                )
                run.progress = replace(run.progress, last_run_at=utc_now())
                await run.save()
                return
            try:
                await msg.ack_sync()
            except (TimeoutError, nats.errors.Error) as exc:
                await _hand_back(messages[position + 1 :])
                raise BackendUnavailableError(
                    f"JetStream source {source.name}: acknowledging sequence {seq} failed "
                    f"({type(exc).__name__}); its records are charged, a redelivery charges "
                    "nothing twice"
                ) from None
            run.progress = replace(run.progress, stream_seq=seq)
        await run.save()
    try:
        info = await sub.consumer_info()  # type: ignore[attr-defined]
        run.report.lag = int(info.num_pending)
    except (TimeoutError, nats.errors.Error) as exc:
        log.warning(
            "usage source %s: its consumer's backlog is unknown this run: %r", source.name, exc
        )
    run.progress = replace(run.progress, last_error=None, last_run_at=utc_now())
    await run.save()


async def _hand_back(messages: list[Msg]) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        for msg in messages:
            try:
                await msg.nak()
            except nats.errors.Error as exc:
                log.warning(
                    "%d unprocessed usage messages not handed back (%r): JetStream redelivers "
                    "them after their ack wait",
                    len(messages),
                    exc,
                )
                return
