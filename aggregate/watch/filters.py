"""The watch's filter: the query language's predicate over one view (``compile_predicate``
of the query planner), compiled once per watch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aggregate.query.plan import QueryLimits, compile_predicate

if TYPE_CHECKING:
    from collections.abc import Callable

    from aggregate.watch.changes import ChangeView


def compile_filter(
    text: str, limits: QueryLimits | None = None
) -> Callable[[ChangeView], bool] | None:
    """The predicate of a watch's ``filter`` (None for '': every change).

    Raises:
        InvalidArgumentError: the filter is malformed or beyond the language's limits (the
            message names the position).
    """
    if not text:
        return None
    predicate: Callable[[ChangeView], bool] = compile_predicate(
        text, limits=limits or QueryLimits()
    )
    return predicate
