"""Calls from one node (or the CLI) to another node's admin HTTP API: plain ``urllib``,
JSON in and out, a timeout on every call, bounded answers, never a proxy.

Used by tenant moves (drain the old owner, reopen and probe the new one) and by the
``aggregate tenant move`` verb. Blocking: run it in a worker thread from async code.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Final

from aggregate.domain.errors import BackendUnavailableError

MAX_ANSWER_BYTES: Final = 1_048_576
"""Largest admin answer read; a longer one is refused."""

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def admin_call(
    addr: str,
    method: str,
    path: str,
    *,
    body: object = None,
    token: str | None = None,
    timeout: float,
) -> tuple[int, Any]:
    """``method path`` on the admin server at ``addr`` (``host:port``); returns the HTTP
    status and the decoded JSON answer (None when the answer is not JSON).

    Raises:
        BackendUnavailableError: nothing answered within ``timeout`` seconds, or the answer
            is longer than ``MAX_ANSWER_BYTES``.
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{addr}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            status, raw = int(response.status), response.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read(MAX_ANSWER_BYTES + 1)
    except (OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise BackendUnavailableError(
            f"cannot reach the admin HTTP server at {addr}: {reason}"
        ) from None
    if len(raw) > MAX_ANSWER_BYTES:
        raise BackendUnavailableError(f"the admin HTTP server at {addr} answered too much")
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None
