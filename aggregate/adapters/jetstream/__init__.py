"""The JetStream event store adapter (DESIGN §4): stream policy, appends, direct-get reads."""

from __future__ import annotations

from aggregate.adapters.jetstream.direct_get import (
    BatchPage as BatchPage,
)
from aggregate.adapters.jetstream.direct_get import (
    DirectGetClient as DirectGetClient,
)
from aggregate.adapters.jetstream.direct_get import (
    DirectMessage as DirectMessage,
)
from aggregate.adapters.jetstream.errors import StreamPolicyError as StreamPolicyError
from aggregate.adapters.jetstream.store import JetStreamEventStore as JetStreamEventStore
from aggregate.adapters.jetstream.store import append_headers as append_headers
from aggregate.adapters.jetstream.stream import (
    DEFAULT_STREAM_NAME as DEFAULT_STREAM_NAME,
)
from aggregate.adapters.jetstream.stream import (
    EVENT_SUBJECTS as EVENT_SUBJECTS,
)
from aggregate.adapters.jetstream.stream import (
    EnsuredStream as EnsuredStream,
)
from aggregate.adapters.jetstream.stream import (
    StreamCheck as StreamCheck,
)
from aggregate.adapters.jetstream.stream import (
    StreamPolicy as StreamPolicy,
)
from aggregate.adapters.jetstream.stream import (
    check_stream_config as check_stream_config,
)
from aggregate.adapters.jetstream.stream import (
    ensure_stream as ensure_stream,
)

__all__ = [
    "DEFAULT_STREAM_NAME",
    "EVENT_SUBJECTS",
    "BatchPage",
    "DirectGetClient",
    "DirectMessage",
    "EnsuredStream",
    "JetStreamEventStore",
    "StreamCheck",
    "StreamPolicy",
    "StreamPolicyError",
    "append_headers",
    "check_stream_config",
    "ensure_stream",
]
