"""One ``SubmitCommands`` stream: pipelined, answered strictly in request order.

A reader task keeps reading requests while earlier commands run, each command in its own
task; the writer (the call's own task) sends the results in request order. At most
``stream_window`` commands are outstanding (read, not yet answered): the reader waits for a
slot before it reads the next request, so HTTP/2 flow control pushes back on the client.

Commands for the same aggregate on one stream run one after the other, in stream order (a
command waits for the previous one naming the same ``(aggregate_type, aggregate_id)``), so a
gateway can pipeline ``Deposit`` then ``Withdraw`` safely. Commands for different
aggregates run concurrently.

A failed command is a ``SubmitCommandResult`` with ``error`` in its place; the stream goes
on. A stream whose tenant floods past its quota is read at its tenant's read schedule
(``aggregate.adapters.grpc.pacing``): each outcome is observed as its command completes,
and while the tenant is in debt the reader does not read the next request (not even the
first of a new stream), so HTTP/2 flow control pushes back on the client as it does for a
full window.

When the server drains, the stream stops reading, answers what it has read, then ends
with UNAVAILABLE: every request after the last result was not processed and can be sent to
another node.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aggregate.adapters.grpc import convert
from aggregate.adapters.grpc.convert import Failure
from aggregate.adapters.grpc.pacing import ReadPacing, stream_outcome
from aggregate.adapters.grpc.tracing import command_span, record_outcome
from aggregate.adapters.tracing import request_context

if TYPE_CHECKING:
    from grpclib.server import Stream

    from aggregate.adapters.grpc.service import CommandService
    from aggregate.domain.context import RequestContext
    from aggregate.gateway.v1 import aggregate_pb2 as pb

    ResultTask = asyncio.Task[pb.SubmitCommandResult]

SHUTTING_DOWN = (
    "server is shutting down: the results sent on this stream are every command it "
    "processed; send the remaining commands to another node"
)


class CommandStream:
    """The state of one ``SubmitCommands`` call; ``run`` it in the call's task."""

    def __init__(
        self,
        service: CommandService,
        stream: Stream[pb.SubmitCommandRequest, pb.SubmitCommandResult],
        tenant_id: str,
        context: RequestContext,
    ) -> None:
        self._service = service
        self._stream = stream
        self._tenant_id = tenant_id
        self._context = context
        self._window = asyncio.Semaphore(service.options.stream_window)
        self._results: asyncio.Queue[ResultTask | None] = asyncio.Queue()
        self._last: dict[tuple[str, str], ResultTask] = {}
        self._items: set[ResultTask] = set()
        self._reader: asyncio.Task[None] | None = None
        self._stop_requested = False
        pacer = service.pacer
        self._pacing = ReadPacing(pacer, tenant_id) if pacer.enabled else None

    def stop_reading(self) -> None:
        """Read no more requests; the commands already read are still answered."""
        self._stop_requested = True
        if self._reader is not None:
            self._reader.cancel()

    async def run(self) -> None:
        """Serve the stream until the client ends it (or the server drains).

        Raises:
            GRPCError: UNAVAILABLE when a drain stopped the stream.

        Cancellation (client gone, deadline): the commands still running are cancelled;
        each may or may not have been appended.
        """
        reader = self._reader = asyncio.get_running_loop().create_task(self._read())
        if self._stop_requested:
            reader.cancel()
        try:
            while (item := await self._results.get()) is not None:
                await self._stream.send_message(await item)
                self._window.release()
        finally:
            leftovers = [reader, *self._items]
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)
        if reader.cancelled():
            await self._service.settle()
            raise GRPCError(Status.UNAVAILABLE, SHUTTING_DOWN)
        error = reader.exception()
        if error is not None:
            raise error

    async def _read(self) -> None:
        try:
            while True:
                await self._window.acquire()
                if self._pacing is not None:
                    delay = self._pacing.pacer.debt(self._tenant_id, time.monotonic())
                    if delay > 0:
                        await asyncio.sleep(delay)
                request = await convert.receive(self._stream)
                if request is None:
                    return
                self._results.put_nowait(self._start(request))
        finally:
            self._results.put_nowait(None)

    def _start(self, request: pb.SubmitCommandRequest) -> ResultTask:
        # Ids are accepted in either case: both spellings name one aggregate, one chain.
        aggregate_id = request.aggregate_id.lower()
        chain = (request.aggregate_type, aggregate_id) if aggregate_id else None
        previous = self._last.get(chain) if chain is not None else None
        task = asyncio.get_running_loop().create_task(self._item(request, previous))
        self._items.add(task)
        task.add_done_callback(self._items.discard)
        if chain is not None:
            self._last[chain] = task
            task.add_done_callback(lambda done: self._forget(chain, done))
        return task

    def _forget(self, chain: tuple[str, str], task: ResultTask) -> None:
        if self._last.get(chain) is task:
            del self._last[chain]

    async def _item(
        self, request: pb.SubmitCommandRequest, previous: ResultTask | None
    ) -> pb.SubmitCommandResult:
        if previous is not None:
            await asyncio.wait({previous})
        tracer = self._service.tracer
        if tracer is None:
            outcome = await self._service.run_command(
                request, self._tenant_id, self._context, self._stream.deadline, "SubmitCommands"
            )
        else:
            with command_span(tracer) as span:
                outcome = await self._service.run_command(
                    request,
                    self._tenant_id,
                    request_context(self._context),
                    self._stream.deadline,
                    "SubmitCommands",
                )
                record_outcome(span, outcome.code if isinstance(outcome, Failure) else "OK")
        if self._pacing is not None:
            quota_rate = outcome.quota_rate if isinstance(outcome, Failure) else None
            stream_outcome(self._pacing, self._tenant_id, quota_rate, time.monotonic())
        if isinstance(outcome, Failure):
            return convert.error_result(outcome.code, outcome.message)
        return convert.ok_result(outcome)
