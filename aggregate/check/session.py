"""One ``aggregate check`` exploration of a whole manifest: open the runners, explore each
type, gather findings and warnings."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hypothesis import configuration

from aggregate.check.explore import ExploreOptions, explore_type
from aggregate.check.runners import open_runners

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aggregate.check.findings import Finding
    from aggregate.domain.manifest import Manifest
    from aggregate.programs.base import ProgramLimits

CheckOptions = ExploreOptions
NOTHING_TO_EXPLORE = (
    "no command schemas and no example commands to generate commands from: add schemas: "
    "or examples: to its manifest entry"
)


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What the exploration found, per type in name order."""

    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    explored: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings


def _sources(spec: Any) -> list[str]:
    return (["schemas"] if spec.schemas else []) + (["examples"] if spec.examples else [])


@contextlib.contextmanager
def _hypothesis_home() -> Iterator[None]:
    """Hypothesis keeps caches under its home directory (``./.hypothesis`` by default): a
    check must not leave one in the user's directory, so it gets a temporary one."""
    previous = getattr(configuration, "__hypothesis_home_directory", None)
    with tempfile.TemporaryDirectory(prefix="aggregate-check-") as home:
        configuration.set_hypothesis_home_dir(home)
        try:
            yield
        finally:
            configuration.set_hypothesis_home_dir(previous)


def check_programs(manifest: Manifest, limits: ProgramLimits, options: CheckOptions) -> CheckReport:
    """Explore every type of ``manifest`` (already compiled by ``check_manifest``).

    Raises:
        ProgramError: a worker process could not start.
    """
    report = CheckReport()
    with _hypothesis_home(), open_runners(manifest, limits) as runners:
        for name, spec in sorted(manifest.types.items()):
            if not _sources(spec):
                report.explored[name] = {"commands_from": [], "skipped": NOTHING_TO_EXPLORE}
                continue
            findings, warnings = explore_type(spec, runners[name], options)
            report.findings.extend(findings)
            report.warnings.extend(warnings)
            report.explored[name] = {
                "commands_from": _sources(spec),
                "findings": [f.kind.value for f in findings],
            }
    return report
