"""The monitoring assets in docs/monitoring: promtool accepts the alert rules and their unit
tests pass, and every expression of the rules and the dashboard parses as PromQL.
(``tests/integration/test_observability_e2e.py`` checks their metric names against a real
scrape.)

promtool comes from Debian's ``prometheus`` package: ``scripts/bootstrap`` puts it in
``.venv/bin`` (``scripts/install-promtool``). Without it these tests are skipped, except on
CI (``CI=true``), where a missing promtool is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "docs" / "monitoring"
RULES = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "aggregate-dashboard.json"
RULE_TESTS = Path(__file__).resolve().parent / "monitoring" / "alerts_test.yml"

FUTURE_METRICS: set[str] = set()
"""Used by the rules and the dashboard before the service serves them (documented so)."""

# Grafana's interval variables stand where PromQL wants a duration.
_GRAFANA_DURATIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def promtool() -> str:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("promtool", path=search)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("promtool is missing on CI: scripts/bootstrap should have installed it")
    pytest.skip("promtool is not installed (scripts/install-promtool puts it in .venv/bin)")


def rule_expressions() -> dict[str, str]:
    """Alert name -> expression, from the rules file."""
    data = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule["expr"] for group in data["groups"] for rule in group["rules"]}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def dashboard_expressions() -> dict[str, str]:
    """``panel title / refId`` -> expression, with Grafana's duration variables replaced."""
    found = {}
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, duration in _GRAFANA_DURATIONS.items():
                expr = expr.replace(variable, duration)
            found[f"{panel['title']} / {target['refId']}"] = expr
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (parsed, not pattern-matched)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def used_metric_names() -> dict[str, set[str]]:
    """Metric name -> where it is used (alert names, dashboard panels)."""
    used: dict[str, set[str]] = {}
    for where, expr in {**rule_expressions(), **dashboard_expressions()}.items():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in result.stdout


def test_the_alerts_fire_on_recorded_series_and_stay_quiet_on_healthy_ones() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m])\n"
    )
    result = subprocess.run(
        [promtool(), "check", "rules", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0


def test_every_alert_named_in_the_docs_is_in_the_rules_and_back() -> None:
    documented = set(
        re.findall(r"^\| `(Aggregate\w+)`", (MONITORING / "README.md").read_text(), re.M)
    )
    assert documented == set(rule_expressions())
    for name in ("AggregateCommandsFailing", "AggregateVersionConflictsHigh",
                 "AggregateCommandLatencyHigh", "AggregateBreakerOpen",
                 "AggregateNatsDisconnected", "AggregateSnapshotLagHigh"):  # fmt: skip
        assert name in documented


def test_every_expression_parses_and_selects_known_families() -> None:
    used = used_metric_names()
    assert used, "no metric found in the monitoring assets"
    prefixes = ("aggregate_", "process_", "python_")
    assert all(name.startswith(prefixes) for name in used), sorted(used)
    for expr in dashboard_expressions().values():
        assert "$__" not in expr, expr


def test_future_metrics_are_documented_as_not_served_yet() -> None:
    readme = (MONITORING / "README.md").read_text()
    assert ("Not yet served" in readme) == bool(FUTURE_METRICS)
    for name in FUTURE_METRICS:
        assert f"`{name}" in readme
        assert name in used_metric_names()


def test_the_dashboard_is_a_grafana_dashboard_over_its_variables() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "job", "instance", "aggregate_type"} <= variables
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"], panel["title"]
