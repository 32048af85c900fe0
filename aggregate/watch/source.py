"""The port a watch reads older changes through: the event stream, by position."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from aggregate.domain.envelopes import StoredRecord
    from aggregate.watch.changes import WatchSubset


class ChangeSource(Protocol):
    """Reads a tenant's stored messages in position order, without consumers."""

    async def read_after(
        self, subset: WatchSubset, after: int, limit: int
    ) -> tuple[list[StoredRecord], bool]:
        """Up to ``limit`` messages of ``subset``'s tenant (and type / aggregate, when set)
        stored after position ``after``, in order, and whether more may follow.

        Raises:
            BackendUnavailableError: the stream cannot be read.
            CorruptDataError, TenantAccessDeniedError: a stored message is malformed or
                names another tenant than its subject.
        """
        ...
