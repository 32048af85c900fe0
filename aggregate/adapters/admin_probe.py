"""Ask a running service's admin HTTP server whether it is ready (``aggregate ready``, the
container health check). Plain ``urllib``; no proxy is ever used for this local probe."""

from __future__ import annotations

import urllib.error
import urllib.request

from aggregate.domain.errors import BackendUnavailableError

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def probe_address(host: str, port: int) -> tuple[str, int]:
    """Where a local client reaches a server bound to ``host:port``: a wildcard bind
    (``0.0.0.0``, ``::``, empty) is reached on loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1", port
    if host == "::":
        return "::1", port
    return host, port


def probe_ready(host: str, port: int, *, timeout: float) -> bool:
    """True when ``GET /ready`` answers 200, False when it answers 503 (starting, draining
    or disconnected from NATS).

    Raises:
        BackendUnavailableError: nothing answered within ``timeout`` seconds, or the answer
            was neither 200 nor 503.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with _NO_PROXY.open(f"http://{where}/ready", timeout=timeout) as response:
            return int(response.status) == 200
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            return False
        raise BackendUnavailableError(
            f"admin HTTP at {where} answered /ready with HTTP {exc.code}"
        ) from None
    except (OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise BackendUnavailableError(
            f"cannot reach the admin HTTP server at {where}: {reason}"
        ) from None
