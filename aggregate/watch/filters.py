"""The watch's filter: the query language's predicate over one view (``compile_predicate``
of the query planner), compiled once per watch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aggregate.domain.errors import InvalidArgumentError

if TYPE_CHECKING:
    from collections.abc import Callable

    from aggregate.watch.changes import ChangeView


def compile_filter(text: str) -> Callable[[ChangeView], bool] | None:
    """The predicate of a watch's ``filter`` (None for '': every change).

    Raises:
        InvalidArgumentError: the filter is malformed or beyond the language's limits (the
            message names the position), or this build has no filter language.
    """
    if not text:
        return None
    try:
        plan: Any = importlib.import_module("aggregate.query.plan")
    except ImportError:
        raise InvalidArgumentError("filters are not supported yet") from None
    predicate: Callable[[ChangeView], bool] = plan.compile_predicate(
        text, limits=plan.QueryLimits()
    )
    return predicate
