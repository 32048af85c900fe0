"""Multi-tenant, event-sourced command service on NATS JetStream.

The names below are the supported API; everything else may change. Domain names are
imported eagerly (they are pure and cheap); the handler, stores and service load on first
use, so program worker processes that import this package stay light.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version
from typing import TYPE_CHECKING, Any

from aggregate.domain.context import RequestContext as RequestContext
from aggregate.domain.envelopes import AggregateView as AggregateView
from aggregate.domain.envelopes import Command as Command
from aggregate.domain.envelopes import CommandResult as CommandResult
from aggregate.domain.envelopes import Event as Event
from aggregate.domain.errors import AggregateError as AggregateError
from aggregate.domain.errors import CommandRejectedError as CommandRejectedError
from aggregate.domain.errors import ConfigError as ConfigError
from aggregate.domain.errors import VersionConflictError as VersionConflictError
from aggregate.domain.ids import AggregateKey as AggregateKey
from aggregate.domain.ids import uuid7 as uuid7

if TYPE_CHECKING:
    from aggregate.application.handler import CommandHandler as CommandHandler
    from aggregate.application.handler import HandlerSettings as HandlerSettings
    from aggregate.config import Settings as Settings
    from aggregate.config import load_settings as load_settings
    from aggregate.service.app import Service as Service

try:
    __version__ = _distribution_version("aggregate")
    """The installed distribution's version: pyproject.toml's, the one source of it."""
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "CommandHandler": "aggregate.application.handler",
    "HandlerSettings": "aggregate.application.handler",
    "Settings": "aggregate.config",
    "load_settings": "aggregate.config",
    "Service": "aggregate.service.app",
}

__all__ = [
    "AggregateError",
    "AggregateKey",
    "AggregateView",
    "Command",
    "CommandHandler",
    "CommandRejectedError",
    "CommandResult",
    "ConfigError",
    "Event",
    "HandlerSettings",
    "RequestContext",
    "Service",
    "Settings",
    "VersionConflictError",
    "__version__",
    "load_settings",
    "uuid7",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aggregate' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
