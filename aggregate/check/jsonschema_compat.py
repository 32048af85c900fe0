"""hypothesis-jsonschema (0.23, its latest release) with current Hypothesis.

Its object strategy drives ``hypothesis.internal.conjecture.utils.many`` through the old
``while elements.more(): ...`` protocol; current Hypothesis replaced it with
``with many(...) as elements: for _ in elements: ...``. ``from_schema`` here gives the
library a ``many`` that keeps the old protocol on top of the new one, only when the
installed Hypothesis lacks ``more`` (with an older Hypothesis the library runs as it is).
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

from hypothesis.internal.conjecture import utils as cu

if TYPE_CHECKING:
    from collections.abc import Iterator

    from hypothesis.strategies import SearchStrategy


class _OldProtocolMany:
    """``many`` with ``more()`` and ``reject()``, as hypothesis-jsonschema calls them."""

    def __init__(self, data: Any, **kwargs: Any) -> None:
        self._many = cu.many(data, **kwargs)
        self._many.__enter__()
        self._elements: Iterator[None] = iter(self._many)
        self._open = True

    def more(self) -> bool:
        if not self._open:
            return False
        try:
            next(self._elements)
        except StopIteration:
            self._open = False
            self._many.__exit__(None, None, None)
            return False
        return True

    def reject(self, why: str | None = None) -> None:
        self._many.reject(why)


def _install() -> None:
    from hypothesis_jsonschema import _from_schema

    if hasattr(cu.many, "more") or getattr(_from_schema, "cu", None) is not cu:
        return
    shim = types.SimpleNamespace(**{k: getattr(cu, k) for k in dir(cu) if not k.startswith("__")})
    shim.many = _OldProtocolMany
    setattr(_from_schema, "cu", shim)  # noqa: B010 (the library does not export it)


def from_schema(schema: dict[str, Any]) -> SearchStrategy[Any]:
    """``hypothesis_jsonschema.from_schema``, working with the installed Hypothesis.

    Raises:
        hypothesis.errors.InvalidArgument, and others: a schema it cannot generate from.
    """
    _install()
    from hypothesis_jsonschema import from_schema as generate

    strategy: SearchStrategy[Any] = generate(schema)
    return strategy
