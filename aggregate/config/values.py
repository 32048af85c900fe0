"""Parsers for single configuration values.

Each parser takes a raw value as it arrives from the environment (always ``str``) or from a
config file (whatever YAML/TOML/JSON made of it) and returns the typed value, or raises
``ValueError`` whose text says what is wrong with the value. The loader adds where the value
came from (the file and key, or the environment variable), so these stay small and pure.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aggregate.domain.errors import InvalidArgumentError
from aggregate.domain.ids import validate_aggregate_type, validate_tenant_id

Parser = Callable[[object], Any]
E = TypeVar("E", bound=StrEnum)

EMBEDDED = "embedded"
"""The ``nats_url`` value that makes the service start its bundled nats-server."""

NATS_SCHEMES = ("nats", "tls", "ws", "wss")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class AccessLogMode(StrEnum):
    """Which gRPC calls get an access-log line: none, every one, or a sample (every call
    that did not end OK, and one in ``access_log_sample_every`` of those that did)."""

    OFF = "off"
    ON = "on"
    SAMPLED = "sampled"


class EventLoop(StrEnum):
    """The asyncio event loop the command path (gRPC, NATS, the handler) runs on."""

    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


def default_event_loop() -> EventLoop:
    """The standard library's loop: uvloop measured no cheaper per command for the service
    (its time is in Python code), so it is a choice, not the default."""
    return EventLoop.ASYNCIO


def uvloop_available() -> bool:
    """True when ``uvloop`` can be imported."""
    return importlib.util.find_spec("uvloop") is not None


def parse_event_loop(value: object) -> EventLoop:
    """``uvloop`` or ``asyncio``; ``uvloop`` only where it is installed."""
    loop: EventLoop = enum_parser(EventLoop)(value)
    if loop is EventLoop.UVLOOP and not uvloop_available():
        raise ValueError("uvloop is not installed here; use asyncio")
    return loop


_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_INT = re.compile(r"[+-]?[0-9]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*\.?")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KV_KEY = re.compile(r"[-/_=.A-Za-z0-9]+")


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def parse_str(value: object) -> str:
    """A non-empty string (file values of other types are refused, not converted)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_show(value)}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def parse_bool(value: object) -> bool:
    """``true``/``false``, ``1``/``0``, ``yes``/``no`` (any case), or a file boolean."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(f"expected a boolean (true/false, 1/0, yes/no), got {_show(value)}")


def int_parser(minimum: int, maximum: int | None = None) -> Parser:
    """A parser for integers in ``[minimum, maximum]`` (decimal text or a file integer)."""

    def parse(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _INT.fullmatch(value.strip()):
            number = int(value.strip())
        else:
            raise ValueError(f"expected an integer, got {_show(value)}")
        if number < minimum:
            limit = {0: "not be negative", 1: "be positive (at least 1)"}.get(
                minimum, f"be at least {minimum}"
            )
            raise ValueError(f"must {limit}, got {number}")
        if maximum is not None and number > maximum:
            raise ValueError(f"must be at most {maximum}, got {number}")
        return number

    return parse


def enum_parser(kind: type[E]) -> Parser:
    """A parser for one of ``kind``'s values (case-insensitive)."""

    def parse(value: object) -> E:
        text = parse_str(value).strip().lower()
        try:
            return kind(text)
        except ValueError:
            choices = ", ".join(member.value for member in kind)
            raise ValueError(f"expected one of {choices}, got {_show(value)}") from None

    return parse


def parse_path(value: object) -> Path:
    """A filesystem path; ``~`` is expanded. Relative paths are resolved by the loader."""
    return Path(parse_str(value)).expanduser()


def optional(parse: Parser) -> Parser:
    """Wrap ``parse`` so that null (files) and the empty string (environment) mean unset."""

    def parse_optional(value: object) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return parse(value)

    return parse_optional


def parse_nats_url(value: object) -> str:
    """``embedded`` (also the empty string), or comma-separated ``nats://``, ``tls://``,
    ``ws://`` or ``wss://`` URLs, each with a host and an optional port."""
    if value is None or (isinstance(value, str) and value.strip() in ("", EMBEDDED)):
        return EMBEDDED
    text = parse_str(value)
    urls = [part.strip() for part in text.split(",")]
    for url in urls:
        if not url:
            raise ValueError(f"empty entry in the URL list {text!r}")
        if url == EMBEDDED:
            raise ValueError(f"{EMBEDDED!r} cannot be combined with server URLs")
        if "://" not in url:
            raise ValueError(f"{url!r} has no scheme; write e.g. nats://{url}")
        parts = urlsplit(url)
        if parts.scheme not in NATS_SCHEMES:
            schemes = ", ".join(f"{scheme}://" for scheme in NATS_SCHEMES)
            raise ValueError(f"{url!r} has scheme {parts.scheme}://; use one of {schemes}")
        if not parts.hostname:
            raise ValueError(f"{url!r} has no host")
        try:
            parts.port  # noqa: B018 - property access validates the port
        except ValueError:
            raise ValueError(f"{url!r} has an invalid port") from None
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r} must not have a query or fragment")
    return ",".join(urls)


MAX_URL_CHARS = 2048
OTLP_PROTOCOLS = ("http/protobuf",)


def parse_http_url(value: object) -> str:
    """An ``http://`` or ``https://`` URL with a host, an optional port and path, and no
    user, query or fragment (at most 2048 characters)."""
    text = parse_str(value).strip()
    if len(text) > MAX_URL_CHARS:
        raise ValueError(f"URL is {len(text)} characters long; at most {MAX_URL_CHARS}")
    shown = repr(redact_url_credentials(text)[:100])
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{shown} is not an http:// or https:// URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(
            f"{shown} must not hold credentials, a query or a fragment "
            "(OTLP headers go in OTEL_EXPORTER_OTLP_HEADERS)"
        )
    if not parts.hostname:
        raise ValueError(f"{shown} has no host")
    try:
        parts.port  # noqa: B018 - property access validates the port
    except ValueError:
        raise ValueError(f"{shown} has an invalid port") from None
    return text


def parse_otlp_protocol(value: object) -> str:
    """The OTLP transport: only ``http/protobuf`` is installed."""
    text = parse_str(value).strip().lower()
    if text not in OTLP_PROTOCOLS:
        raise ValueError(
            f"{text[:40]!r} is not supported: the service exports OTLP over http/protobuf "
            "only (point the endpoint at the collector's HTTP port, usually 4318)"
        )
    return text


def redact_url_credentials(urls: str) -> str:
    """``urls`` with any user/password/token part replaced by ``***`` (for repr and logs)."""
    redacted = []
    for url in urls.split(","):
        scheme, sep, rest = url.partition("://")
        if sep and "@" in rest.split("/", 1)[0]:
            rest = "***@" + rest.split("@", 1)[1]
        redacted.append(f"{scheme}{sep}{rest}")
    return ",".join(redacted)


def split_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into its host and port (0 = any free
    port, as tests bind).

    Raises:
        ValueError: the address is malformed; the text says how.
    """
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        sep, port_text = rest[:1], rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if ":" in host:
            raise ValueError(f"{value!r}: write IPv6 addresses in brackets, e.g. [::1]:8080")
        if host and not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{value!r}: {host!r} is not a host name or IP address")
    if sep != ":" or not host:
        raise ValueError(f"expected host:port (e.g. 0.0.0.0:8080), got {value!r}")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{value!r}: port {port_text!r} is not a number in 0-65535")
    return host, int(port_text)


def parse_host_port(value: object) -> str:
    """A ``host:port`` bind address, kept as text (``Settings`` splits it)."""
    text = parse_str(value).strip()
    split_host_port(text)
    return text


def _token(check: Callable[[str], str], what: str) -> Parser:
    def parse(value: object) -> str:
        text = parse_str(value)
        try:
            return check(text)
        except InvalidArgumentError as exc:
            raise ValueError(exc.message) from None

    parse.__doc__ = f"A {what}: 1-64 characters of A-Z a-z 0-9 _ -."
    return parse


parse_tenant_id = _token(validate_tenant_id, "tenant id")
parse_aggregate_type = _token(validate_aggregate_type, "aggregate type name")


def name_parser(what: str) -> Parser:
    """A NATS name (shard id, stream, KV bucket): 1-64 characters of A-Z a-z 0-9 _ -."""

    def parse(value: object) -> str:
        text = parse_str(value)
        if not _NAME.fullmatch(text):
            raise ValueError(f"{what} {text!r} is invalid: use 1-64 characters of A-Z a-z 0-9 _ -")
        return text

    return parse


def parse_kv_key(value: object) -> str:
    """A NATS KV key: ``A-Z a-z 0-9 - / _ = .``, not starting or ending with a dot."""
    text = parse_str(value)
    if not _KV_KEY.fullmatch(text) or text.startswith(".") or text.endswith("."):
        raise ValueError(
            f"KV key {text!r} is invalid: use A-Z a-z 0-9 - / _ = . "
            "and do not start or end with a dot"
        )
    return text


def parse_log_level(value: object) -> str:
    """One of ``debug``, ``info``, ``warning`` (or ``warn``), ``error``, ``critical``."""
    text = parse_str(value).strip().lower()
    text = "warning" if text == "warn" else text
    if text not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {_show(value)}")
    return text


PYTHON_REFERENCE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def parse_python_reference(value: object) -> str:
    """A trusted Python callable reference, ``package.module:function``."""
    text = parse_str(value).strip()
    if not PYTHON_REFERENCE.fullmatch(text):
        raise ValueError(
            f"expected a Python reference like 'package.module:function', got {text!r}"
        )
    return text
