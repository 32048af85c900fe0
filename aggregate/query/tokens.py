"""Page tokens: the last row's sort values, bound by HMAC-SHA256 to one query.

A token is URL-safe base64 of ``payload || mac``; ``payload`` is the JSON list of the last
row's sort values (aggregate_id last); ``mac`` covers the tenant, the type, the canonical
filter and order and the payload, so a token from another query, or altered, is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import TYPE_CHECKING

from aggregate.domain.errors import InvalidArgumentError

if TYPE_CHECKING:
    from aggregate.query.order import SortValue

MAX_TOKEN_CHARS = 65536
"""The longest page token accepted (sort values are stored whole, strings included)."""

_MAC_BYTES = 32


def _mac(key: bytes, scope: tuple[str, str, str, str], payload: bytes) -> bytes:
    message = json.dumps(list(scope), ensure_ascii=True).encode() + b"\n" + payload
    return hmac.new(key, message, hashlib.sha256).digest()


def encode_token(key: bytes, scope: tuple[str, str, str, str], values: list[SortValue]) -> str:
    """The token after a row whose sort values are ``values``; ``scope`` is (tenant, type,
    canonical filter, canonical order)."""
    payload = json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload + _mac(key, scope, payload)).decode().rstrip("=")


def decode_token(
    key: bytes, scope: tuple[str, str, str, str], token: str, count: int
) -> list[SortValue]:
    """The sort values a token carries.

    Raises:
        InvalidArgumentError: "page token is malformed" (not a token at all) or "page token
            does not belong to this query" (another tenant, type, filter or order, or altered).
    """
    malformed = InvalidArgumentError("page token is malformed")
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise malformed
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise malformed from None
    if len(raw) <= _MAC_BYTES:
        raise malformed
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(key, scope, payload)):
        raise InvalidArgumentError("page token does not belong to this query")
    try:
        values = json.loads(payload)
    except ValueError:
        raise malformed from None
    if (
        not isinstance(values, list)
        or len(values) != count
        or not all(isinstance(v, int | float | str) and not isinstance(v, bool) for v in values)
    ):
        raise malformed
    return values
