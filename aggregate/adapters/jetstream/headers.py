"""NATS message headers parsed with fewer Python steps, the same result as nats-py's parser.

nats-py parses every header block it receives with ``Client._parse_header_lines``, a
per-line loop that tests each character of each name with ``str.isspace`` in a generator:
for the 19 headers of a stored message read back by direct get (the 12 the service writes
plus those the server adds) that loop costs about as much as decoding the record itself,
and replays and index rebuilds read every message of a stream.

``parse_header_lines`` returns exactly what nats-py's function returns for every input
(pinned by a property test against it): the same per-line loop, on text decoded once when
the block is ASCII, with the name tested by one regular expression instead of a generator
over its characters (about half the time for a stored message's headers;
``bench/replay_bench.py``). ``install`` puts it on
one client: nats-py calls ``self._parse_header_lines``, so an attribute of the instance
takes precedence over the class's static method and nothing else of the library changes.
A nats-py whose client lacks that hook is left as it is.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from nats.aio.client import Client

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

_NAME_SPACE = re.compile(rb"[\t\n\x0b\x0c\r\x1c-\x1f ]")
"""The ASCII characters ``str.isspace`` accepts: a name containing one is dropped."""
_NAME_SPACE_TEXT = re.compile(r"[\t\n\x0b\x0c\r\x1c-\x1f ]")
_ASCII_STRIP = " \t\n\x0b\x0c\r"
"""What ``bytes.strip()`` strips."""


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """``Name: Value`` lines (CRLF-separated, after the ``NATS/1.0`` line) as a dict.

    As nats-py: lines without a colon are skipped; the name is stripped and must be ASCII
    without whitespace inside (else the line is skipped); the value is stripped and decoded
    as UTF-8 with replacement characters; a repeated name keeps its last value.
    """
    if not raw.isascii():
        return _parse_bytes(raw)
    # ASCII (every block this service and the server write): decode once, split as text.
    # str.strip() would also strip \x1c-\x1f, which bytes.strip() keeps: name the set.
    out: dict[str, str] = {}
    for line in raw.decode("ascii").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name = name.strip(_ASCII_STRIP)
        if _NAME_SPACE_TEXT.search(name) is None:
            out[name] = value.strip(_ASCII_STRIP)
    return out


def _parse_bytes(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip()
        if not name.isascii() or _NAME_SPACE.search(name) is not None:
            continue
        out[name.decode("ascii")] = value.strip().decode("utf-8", "replace")
    return out


def install(nc: NATS) -> bool:
    """Make ``nc`` parse received headers with ``parse_header_lines``; idempotent.

    Returns whether the fast parser is in place (False: this nats-py has no such hook).
    """
    if not callable(getattr(Client, "_parse_header_lines", None)):
        return False
    nc._parse_header_lines = parse_header_lines  # type: ignore[method-assign]
    return True
