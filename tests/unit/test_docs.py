"""The product docs (README.md, docs/) stand on their own and name real things."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from aggregate.adapters.metrics import Metrics
from aggregate.adapters.protection_metrics import ProtectionMetrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_docs_cite_nothing_outside_the_repository() -> None:
    for path in DOCS:
        text = path.read_text()
        assert not re.search(r"\bDESIGN\b", text), f"{path.name} cites DESIGN"
        assert "/work/" not in text, f"{path.name} names a path outside the repository"
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.name} links to {target}"


def test_readme_sends_consumers_to_the_wire_format() -> None:
    assert "(docs/wire-format.md)" in (ROOT / "README.md").read_text()


def exposed_metric_names() -> set[str]:
    """The names a scrape shows: counters with ``_total``, histograms by family name."""
    registry = CollectorRegistry()
    Metrics(registry)
    ProtectionMetrics(registry)
    names = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "info":
            names.add(family.name + "_info")
        else:
            names.add(family.name)
    return names


def test_operations_names_only_metrics_that_exist() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    metrics = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `(aggregate_[a-z_]+)`", metrics, re.M))
    assert named, "the Metrics section names no metric"
    unknown = named - exposed_metric_names()
    assert not unknown, f"docs/operations.md names metrics the service does not expose: {unknown}"
