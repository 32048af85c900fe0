"""Why a watch ended; each maps to its status through the one table (``domain.status``)."""

from __future__ import annotations

from aggregate.domain.errors import (
    BackendUnavailableError,
    ResourceExhaustedError,
    TenantUnavailableError,
)


class WatcherTooSlowError(ResourceExhaustedError):
    """Raised to a watcher whose queue of unsent changes reached its bound (count or bytes):
    it is ended rather than let the server's memory grow; it resumes from the last position
    it received (RESOURCE_EXHAUSTED)."""


class WatchTenantMovedError(TenantUnavailableError):
    """Raised to the watchers of a tenant this node stops hosting (UNAVAILABLE, naming the
    owner when known); they resume on the owner from the last position they received."""


class WatchInterruptedError(BackendUnavailableError):
    """Raised to watchers when the service shuts down, or when an append of their tenant
    ended with an unknown outcome (it may be stored at a position the command path never
    reported): resuming reads the stream, which holds every stored change (UNAVAILABLE)."""
