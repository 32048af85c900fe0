"""The admin API's ingestion routes (bearer-gated like every ``/admin/*`` route).

- ``POST /admin/ingest/run``: one run now (body ``{}`` or ``{"source": "A"}``); the run
  summary (``"ok": false`` when a source halted or failed; the HTTP status is still 200).
- ``GET /admin/ingest/sources``: every source with its progress and last error.
- ``GET /admin/ingest/consumed?tenant=&source=&after=&limit=``: a page of the
  consumed-record index in write order; pass ``next_after`` as ``after`` for the next page.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from quart import Response, request

from aggregate.application.admin import parse_json_object
from aggregate.domain.errors import AggregateNotFoundError, InvalidArgumentError, quote
from aggregate.domain.ids import TOKEN_PATTERN, validate_tenant_id

if TYPE_CHECKING:
    from quart import Quart

DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_POSITION = 2**63 - 1


class IngestAdmin(Protocol):
    """What the routes need (``aggregate.ingest.subsystem.IngestSubsystem`` is one)."""

    async def run_now(self, source: str | None) -> dict[str, Any]: ...

    async def sources(self) -> list[dict[str, Any]]: ...

    async def consumed(
        self, *, tenant_id: str | None, source: str | None, after: int, limit: int
    ) -> dict[str, Any]: ...


def _json(value: object, status: int = 200) -> Response:
    return Response(
        json.dumps(value, separators=(",", ":")), status, content_type="application/json"
    )


def _source(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not TOKEN_PATTERN.fullmatch(value):
        raise InvalidArgumentError(
            f"{what} {quote(value)} is not a source name (1-64 of A-Z a-z 0-9 _ -)"
        )
    return value


def _int(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not low <= int(raw) <= high:
        raise InvalidArgumentError(
            f"{name} {quote(raw, 20)} must be an integer from {low} to {high}"
        )
    return int(raw)


def install_ingest_routes(app: Quart, ingest: IngestAdmin | None) -> None:
    """Add the ingestion routes to the admin app (with no ingestor, they answer 404)."""

    def need() -> IngestAdmin:
        if ingest is None:
            raise AggregateNotFoundError(
                "usage ingestion is not configured on this node (AGGREGATE_INGEST_SOURCES)"
            )
        return ingest

    @app.post("/admin/ingest/run")
    async def ingest_run() -> Response:
        body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        fields = parse_json_object(body, allow_empty=True)
        unknown = sorted(set(fields) - {"source"})
        if unknown:
            raise InvalidArgumentError(f'unknown field {quote(unknown[0])}: only "source"')
        summary = await need().run_now(_source(fields.get("source"), "source"))
        return _json(summary)

    @app.get("/admin/ingest/sources")
    async def ingest_sources() -> Response:
        return _json(await need().sources())

    @app.get("/admin/ingest/consumed")
    async def ingest_consumed() -> Response:
        tenant = request.args.get("tenant") or None
        page = await need().consumed(
            tenant_id=validate_tenant_id(tenant) if tenant is not None else None,
            source=_source(request.args.get("source") or None, "source"),
            after=_int("after", 0, 0, MAX_POSITION),
            limit=_int("limit", DEFAULT_PAGE, 1, MAX_PAGE),
        )
        return _json(page)
