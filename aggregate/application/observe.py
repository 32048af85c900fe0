"""Observation hooks the pipeline calls; the metrics adapter implements them (DESIGN §8).

Kept as protocols here so the pipeline does not import prometheus-client, and tests can pass
recorders. Every method must be cheap and must never raise.
"""

from __future__ import annotations

from typing import Protocol


class CommandObserver(Protocol):
    """Per-command hooks called by the transports (gRPC) around the handler."""

    def command_started(self, tenant_id: str, aggregate_type: str) -> None: ...

    def command_finished(
        self, tenant_id: str, aggregate_type: str, outcome: str, seconds: float
    ) -> None:
        """``outcome`` is ``aggregate.domain.status.outcome_of(error)``."""
        ...

    def read_finished(
        self, method: str, tenant_id: str, aggregate_type: str, outcome: str, seconds: float
    ) -> None:
        """A read (``method``: ``GetAggregate``) answered; ``outcome`` as for commands."""
        ...

    def tenant_error(self, tenant_id: str, reason: str) -> None:
        """A tenant-level refusal: invalid tenant id, not hosted, draining, access denied."""
        ...


class NoCommandObserver:
    def command_started(self, tenant_id: str, aggregate_type: str) -> None:
        pass

    def command_finished(
        self, tenant_id: str, aggregate_type: str, outcome: str, seconds: float
    ) -> None:
        pass

    def read_finished(
        self, method: str, tenant_id: str, aggregate_type: str, outcome: str, seconds: float
    ) -> None:
        pass

    def tenant_error(self, tenant_id: str, reason: str) -> None:
        pass
