"""``GET /admin/tenants`` paging over real HTTP (real hypercorn, h11 client, fake backend):
the page parameters reach the backend validated, the next page is linked, bad ones are 400."""

from __future__ import annotations

import pytest

from aggregate.application.admin import TenantPage
from tests.integration.admin_harness import (
    AUTH,
    FakeBackend,
    make_server,
    request,
    running,
    status_view,
)

pytestmark = pytest.mark.trio


@pytest.fixture
def backend() -> FakeBackend:
    fake = FakeBackend()
    fake.statuses = {name: status_view(name) for name in ("acme", "globex", "initech")}
    return fake


async def test_pages_follow_the_link_to_the_next_page(backend: FakeBackend) -> None:
    async with running(make_server(backend)) as port:
        first = await request(port, "GET", "/admin/tenants?limit=2", headers=AUTH)
        assert first.status == 200
        assert [t["tenant_id"] for t in first.json()] == ["acme", "globex"]  # type: ignore[attr-defined]
        assert first.headers["link"] == '</admin/tenants?after=globex&limit=2>; rel="next"'
        last = await request(port, "GET", "/admin/tenants?after=globex&limit=2", headers=AUTH)
        assert [t["tenant_id"] for t in last.json()] == ["initech"]  # type: ignore[attr-defined]
        assert "link" not in last.headers
        everything = await request(port, "GET", "/admin/tenants", headers=AUTH)
        assert len(everything.json()) == 3  # type: ignore[arg-type]
        assert "link" not in everything.headers
    assert backend.calls == [
        ("tenants", TenantPage(None, 2)),
        ("tenants", TenantPage("globex", 2)),
        ("tenants", TenantPage()),
    ]


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("/admin/tenants?limit=0", "limit must be a whole number from 1 to 1000"),
        ("/admin/tenants?limit=5000", "from 1 to 1000"),
        ("/admin/tenants?after=a%2Fb", "after: "),
        ("/admin/tenants?after=x&after=y", "at most once"),
        ("/admin/tenants?offset=10", "unknown field(s) 'offset'"),
        ("/admin/tenants?limit=%ZZ", "got '%ZZ'"),
    ],
)
async def test_bad_page_parameters_are_400_and_reach_no_backend(
    backend: FakeBackend, target: str, says: str
) -> None:
    async with running(make_server(backend)) as port:
        reply = await request(port, "GET", target, headers=AUTH)
    assert reply.status == 400
    error = reply.json()["error"]  # type: ignore[index]
    assert says in error
    assert backend.calls == []


async def test_page_parameters_need_the_admin_token(backend: FakeBackend) -> None:
    async with running(make_server(backend)) as port:
        reply = await request(port, "GET", "/admin/tenants?limit=0")
    assert reply.status == 401
    assert backend.calls == []
