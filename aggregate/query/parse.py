"""Parsing a filter or an order with lark (LALR), into the AST of ``ast``.

Limits are checked while parsing (the tree is built bottom-up by lark's inline transformer,
so even a deep input never recurses in Python): length first, then nesting depth and the
number of terms. Every failure is an ``InvalidArgumentError`` naming the column and
quoting a short excerpt of the input, never a lark message or traceback.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from aggregate.domain.errors import InvalidArgumentError, bound_message, quote
from aggregate.query.ast import (
    COLUMNS,
    And,
    Comparison,
    Everything,
    Node,
    Not,
    Or,
    OrderKey,
    Path,
    Presence,
    Value,
)
from aggregate.query.values import INT64_MAX, INT64_MIN

if TYPE_CHECKING:
    from aggregate.query.plan import QueryLimits

GRAMMAR = r"""
filter: expr?
?expr: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: unary (_AND unary)*
?unary: _NOT unary -> negation
      | atom
?atom: comparison
     | presence
     | "(" expr ")" -> group
comparison: PATH OP literal
presence: PATH ":" "*"
?literal: NUMBER -> number
        | STRING -> string
        | "true" -> true
        | "false" -> false
        | "null" -> null

order: order_key ("," order_key)*
order_key: PATH DIRECTION?

_AND: "AND"
_OR: "OR"
_NOT: "NOT"
DIRECTION: "asc" | "desc"
OP: "<=" | ">=" | "!=" | "=" | "<" | ">"
PATH: /[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*/
NUMBER: /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/
STRING: /"([^"\\\x00-\x1f]|\\["\\\/bfnrt]|\\u[0-9a-fA-F]{4})*"/
%ignore /[ \t]+/
"""

MAX_PATH_KEYS = 16
"""The most keys a state path may have after ``state`` (JSON nesting the index can reach)."""
MAX_ORDER_KEYS = 8
"""The most keys an order may name (aggregate_id is always added last)."""


@dataclass(frozen=True, slots=True)
class _Built:
    """A node while parsing, with its nesting depth and number of terms."""

    node: Node
    depth: int
    terms: int


class _Builder(Transformer[Token, Any]):
    def __init__(self, limits: QueryLimits) -> None:
        super().__init__()
        self.limits = limits

    def _check(self, built: _Built) -> _Built:
        if built.depth > self.limits.max_depth:
            raise InvalidArgumentError(
                f"filter is nested more than {self.limits.max_depth} levels deep"
            )
        if built.terms > self.limits.max_terms:
            raise InvalidArgumentError(f"filter has more than {self.limits.max_terms} terms")
        return built

    def _compound(self, kind: type[And] | type[Or], children: list[_Built]) -> _Built:
        items: list[Node] = []
        for child in children:
            # a AND (b AND c) is one conjunction: flat, so the SQL keeps every term top-level
            items.extend(child.node.items if isinstance(child.node, kind) else (child.node,))
        return self._check(
            _Built(
                kind(tuple(items)),
                1 + max(c.depth for c in children),
                sum(c.terms for c in children),
            )
        )

    def and_expr(self, children: list[_Built]) -> _Built:
        return self._compound(And, children)

    def or_expr(self, children: list[_Built]) -> _Built:
        return self._compound(Or, children)

    def negation(self, children: list[_Built]) -> _Built:
        (child,) = children
        return self._check(_Built(Not(child.node), child.depth + 1, child.terms))

    def group(self, children: list[_Built]) -> _Built:
        (child,) = children
        return self._check(_Built(child.node, child.depth + 1, child.terms))

    def comparison(self, children: list[Any]) -> _Built:
        path_token, op, (value, value_token) = children
        path = to_path(path_token)
        _check_types(path, str(op), value, value_token or op)
        return self._check(_Built(Comparison(path, str(op), value), 1, 1))

    def presence(self, children: list[Token]) -> _Built:
        return self._check(_Built(Presence(to_path(children[0])), 1, 1))

    def number(self, children: list[Token]) -> tuple[Value, Token]:
        return parse_number(children[0]), children[0]

    def string(self, children: list[Token]) -> tuple[Value, Token]:
        (token,) = children
        text: str = json.loads(str(token))
        if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            raise _error(token, "a string may not hold a lone surrogate (\\ud800-\\udfff)")
        if "\x00" in text:
            raise _error(token, "a string may not hold U+0000")
        return text, token

    def true(self, _: list[Token]) -> tuple[Value, None]:
        return True, None

    def false(self, _: list[Token]) -> tuple[Value, None]:
        return False, None

    def null(self, _: list[Token]) -> tuple[Value, None]:
        return None, None

    def filter(self, children: list[_Built]) -> Node:
        return children[0].node if children else Everything()

    def order_key(self, children: list[Token]) -> OrderKey:
        path = to_path(children[0], "order_by")
        return OrderKey(path, len(children) > 1 and str(children[1]) == "desc")

    def order(self, children: list[OrderKey]) -> tuple[OrderKey, ...]:
        if len(children) > MAX_ORDER_KEYS:
            raise InvalidArgumentError(f"order_by names more than {MAX_ORDER_KEYS} fields")
        seen = [k.path for k in children]
        if len(set(seen)) != len(seen):
            raise InvalidArgumentError("order_by names a field twice")
        return tuple(children)


def _error(token: Token | None, what: str, source: str = "filter") -> InvalidArgumentError:
    where = f" at column {token.column}" if token is not None and token.column else ""
    return InvalidArgumentError(bound_message(f"{source}{where}: {what}"))


def to_path(token: Token, source: str = "filter") -> Path:
    """The ``Path`` a PATH token names. Raises InvalidArgumentError for an unknown field."""
    parts = str(token).split(".")
    head, keys = parts[0], tuple(parts[1:])
    if head in COLUMNS and not keys:
        return Path(head)
    if head == "state" and keys:
        if len(keys) > MAX_PATH_KEYS:
            raise _error(token, f"a state path has at most {MAX_PATH_KEYS} keys", source)
        return Path("state", keys)
    raise _error(
        token,
        f"unknown field {quote(str(token))}; fields are aggregate_id, version, updated_at "
        "and state.<key>[.<key>...]",
        source,
    )


_PATH_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def path_of(text: str) -> Path:
    """The ``Path`` a field path names (an index path, an order key).

    Raises:
        InvalidArgumentError: not a field path.
    """
    if len(text) > 512 or not _PATH_RE.fullmatch(text):
        raise InvalidArgumentError(f"{quote(text)} is not a field path")
    return to_path(Token("PATH", text, column=None), "path")


def parse_number(token: Token) -> Value:
    """A NUMBER token's value: an int within 64 bits, else a float (as SQLite's JSON reads
    numbers). Raises InvalidArgumentError when it is beyond the range of a double."""
    text = str(token)
    value: int | float
    if any(c in text for c in ".eE"):
        value = float(text)
    else:
        if len(text) > 400:
            raise _error(token, "number out of range")
        value = int(text)
        if not INT64_MIN <= value <= INT64_MAX:
            value = float(value)
    if math.isinf(value):
        raise _error(token, "number out of range")
    return value


def _check_types(path: Path, op: str, value: Value, where: Token) -> None:
    if value is None or isinstance(value, bool):
        what = "null" if value is None else "a boolean"
        if op not in ("=", "!="):
            raise _error(where, f"{what} compares with = or !=")
        if path.column != "state":
            raise _error(where, f"{path.column} is never {what}")
        return
    if path.column == "version" and isinstance(value, str):
        raise _error(where, "version compares with numbers")
    if path.column in ("aggregate_id", "updated_at") and not isinstance(value, str):
        raise _error(where, f"{path.column} compares with strings")


@functools.lru_cache(maxsize=8)
def _parser(limits: QueryLimits) -> Lark:
    # The builder runs inside the LALR parser, on each reduction: the AST is built bottom-up
    # without recursion, so a deep input stops at max_depth, however long it is.
    return Lark(GRAMMAR, parser="lalr", start=["filter", "order"], transformer=_Builder(limits))


def _parse(text: str, start: str, limits: QueryLimits) -> Any:
    try:
        return _parser(limits).parse(text, start=start)
    except UnexpectedInput as exc:
        raise _syntax_error(text, start, exc) from None


def _syntax_error(text: str, start: str, exc: UnexpectedInput) -> InvalidArgumentError:
    what = "filter" if start == "filter" else "order_by"
    column = exc.column if isinstance(exc.column, int) and exc.column > 0 else len(text) + 1
    excerpt = text[max(column - 1, 0) : column + 15]
    if isinstance(exc, UnexpectedEOF) or (
        isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
    ):
        column = len(text.rstrip()) + 1
        detail = "unexpected end of input"
    elif isinstance(exc, UnexpectedCharacters | UnexpectedToken):
        detail = f"unexpected {quote(excerpt, 16)}"
    else:
        detail = "syntax error"
    return InvalidArgumentError(bound_message(f"{what} at column {column}: {detail}"))


def parse_filter(text: str, limits: QueryLimits) -> Node:
    """The AST of a filter ('' or blanks: ``Everything``).

    Raises:
        InvalidArgumentError: too long, too deep, too many terms, a syntax error or an
            ill-typed comparison, naming the column.
    """
    if len(text) > limits.max_filter_chars:
        raise InvalidArgumentError(
            f"filter is {len(text)} characters long; the limit is {limits.max_filter_chars}"
        )
    if "\n" in text or "\r" in text:
        raise InvalidArgumentError("filter must be one line")
    node: Node = _parse(text, "filter", limits)
    return node


def parse_order(text: str, limits: QueryLimits) -> tuple[OrderKey, ...]:
    """The keys of an order_by ('' : by aggregate_id), aggregate_id appended as the final
    tie-break unless it is named.

    Raises:
        InvalidArgumentError: too long, a syntax error, an unknown or repeated field.
    """
    if len(text) > limits.max_filter_chars:
        raise InvalidArgumentError(
            f"order_by is {len(text)} characters long; the limit is {limits.max_filter_chars}"
        )
    keys: tuple[OrderKey, ...] = () if not text.strip() else _parse(text, "order", limits)
    if not any(k.path.column == "aggregate_id" for k in keys):
        keys = (*keys, OrderKey(Path("aggregate_id")))
    return keys
