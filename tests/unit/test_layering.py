"""The dependency direction of DESIGN §2: the domain is pure and synchronous."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "aggregate"
FORBIDDEN_IN_DOMAIN = {
    "trio",
    "asyncio",
    "anyio",
    "nats",
    "grpclib",
    "sqlite_utils",
    "sqlite3",
    "socket",
    "quart",
    "quart_trio",
    "hypercorn",
    "starlark",
    "prometheus_client",
    "aggregate.programs",
    "aggregate.application",
    "aggregate.adapters",
    "aggregate.service",
    "aggregate.cli",
}
ASYNCIO_ALLOWED = (
    "adapters/jetstream",
    "adapters/grpc",
    "adapters/placement_kv",
    "adapters/shard_directory",
    "adapters/routing",
    "bridge",
    "client.py",  # the client library: grpclib, asyncio only
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def violates(name: str, forbidden: set[str]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("path", sorted((ROOT / "domain").glob("*.py")), ids=lambda p: p.name)
def test_domain_imports_nothing_async_or_io(path: Path) -> None:
    bad = sorted(n for n in imported_modules(path) if violates(n, FORBIDDEN_IN_DOMAIN))
    assert not bad, f"{path.name} imports {bad}"


def test_only_the_bridge_and_asyncio_adapters_import_asyncio() -> None:
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if "gen/" in rel or any(rel.startswith(a) for a in ASYNCIO_ALLOWED):
            continue
        if "asyncio" in imported_modules(path):
            offenders.append(rel)
    assert not offenders, f"asyncio imported outside the island modules: {offenders}"


def test_layering_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import anyio\nfrom nats.js import api\n")
    assert sorted(n for n in imported_modules(bad) if violates(n, FORBIDDEN_IN_DOMAIN)) == [
        "anyio",
        "nats.js",
    ]


FORBIDDEN_IN_QUERY = FORBIDDEN_IN_DOMAIN - {"sqlite3"}


QUERY_LANGUAGE = {"__init__", "ast", "compile", "order", "parse", "plan", "predicate", "tokens"}
QUERY_LANGUAGE |= {"values"}
QUERY_INDEX = {"index_store", "indexer", "replay"}  # the index: async, fed by the change feed


def test_every_query_module_is_language_or_index() -> None:
    modules = {p.stem for p in (ROOT / "query").glob("*.py")}
    assert modules == QUERY_LANGUAGE | QUERY_INDEX, modules ^ (QUERY_LANGUAGE | QUERY_INDEX)


@pytest.mark.parametrize(
    "path", sorted(ROOT / "query" / f"{m}.py" for m in QUERY_LANGUAGE), ids=lambda p: p.name
)
def test_the_query_language_needs_only_the_domain_and_sqlite(path: Path) -> None:
    # the watch (async) and the QueryService (gRPC) call it; it calls nothing of theirs
    bad = sorted(n for n in imported_modules(path) if violates(n, FORBIDDEN_IN_QUERY))
    assert not bad, f"{path.name} imports {bad}"
