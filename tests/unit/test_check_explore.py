"""``aggregate check`` explores: each broken program under ``check_manifests/`` gets its
finding with a shrunk command sequence (exit 1), the bundled examples are clean (exit 0),
and bad usage is exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aggregate import cli
from aggregate.check.explore import ExploreOptions, _Steps, explore_type
from aggregate.check.findings import FindingKind, classify
from aggregate.domain.errors import ProgramError, ProgramLimitError
from aggregate.domain.manifest import AggregateTypeManifest, ProgramSource
from aggregate.programs.base import Accepted, Decision, Rejected

MANIFESTS = Path(__file__).resolve().parent / "check_manifests"
INLINE_WARNING = "aggregate type wallet runs its Starlark programs with isolation: inline"


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], list[str]]:
    code = cli.main(["check", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else {}, err.splitlines()


@pytest.mark.parametrize(
    ("name", "kind", "commands", "options"),
    [
        ("nondeterministic", "nondeterministic", [{"type": "Count"}], []),
        ("apply_failed", "apply_failed", [{"type": "Note", "text": ""}], []),
        ("decide_crashed", "decide_crashed", [{"type": "Deposit"}], []),
        ("state_not_json", "state_not_json", [{"type": "Tally"}], []),
        (
            "state_too_large",
            "state_too_large",
            [{"type": "Double"}] * 10,
            ["--max-state-bytes", "2000"],
        ),
        ("too_many_events", "too_many_events", [{"type": "Tick", "count": 101}], []),
        ("over_budget", "over_budget", None, []),
    ],
)
def test_each_broken_program_gets_its_finding(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    kind: str,
    commands: list[dict[str, Any]] | None,
    options: list[str],
) -> None:
    monkeypatch.setenv("AGGREGATE_PROGRAM_TIMEOUT_MS", "50")
    manifest = MANIFESTS / f"{name}.yaml"
    code, report, err = check(capsys, str(manifest), "--examples", "25", *options)
    assert code == cli.EXIT_REFUSED, err
    assert report["ok"] is False
    assert [f["kind"] for f in report["findings"]] == [kind]
    (finding,) = report["findings"]
    if commands is not None:
        assert finding["commands"] == commands
    else:  # how many rounds overrun 50 ms depends on the machine: one command, though
        assert [c["type"] for c in finding["commands"]] == ["Spin"]
    assert f"aggregate check: FINDING: {finding['aggregate_type']}: {kind} after" in "\n".join(err)


def test_the_findings_say_what_happened(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGGREGATE_PROGRAM_TIMEOUT_MS", "50")
    messages = {}
    for name in ("apply_failed", "decide_crashed", "over_budget", "too_many_events"):
        _, report, _ = check(capsys, str(MANIFESTS / f"{name}.yaml"), "--examples", "10")
        messages[name] = report["findings"][0]["message"]
    assert "apply failed at" in messages["apply_failed"]
    assert "unknown event type Noted" in messages["apply_failed"]
    assert 'Key `"amount"` was not found' in messages["decide_crashed"]
    assert "ran past its time budget of 0.05s" in messages["over_budget"]
    assert messages["too_many_events"] == (
        "one command produced 101 events, more than the limit of 100 (--max-events)"
    )


def test_an_inline_type_gets_its_warning_line_with_the_findings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, report, err = check(capsys, str(MANIFESTS / "decide_crashed.yaml"), "--examples", "5")
    assert len(report["warnings"]) == 1
    assert INLINE_WARNING in report["warnings"][0]
    assert err[0] == f"aggregate check: WARNING: {report['warnings'][0]}"


@pytest.mark.parametrize("example", ["bank", "billing"])
def test_the_bundled_examples_are_clean(capsys: pytest.CaptureFixture[str], example: str) -> None:
    code, report, err = check(capsys, "--example", example, "--examples", "30", "--seed", "7")
    assert (code, err) == (cli.EXIT_OK, [])
    assert report["ok"] is True
    assert report["findings"] == []
    (explored,) = report["explored"]["aggregate_types"].values()
    assert explored == {"commands_from": ["schemas", "examples"], "findings": []}
    assert report["explored"]["seed"] == 7


def test_a_type_with_nothing_to_generate_from_is_skipped_and_said_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "aggregate_types:\n  plain:\n    decide_source: |\n      def decide(state, command):\n"
        "          return []\n    apply_source: |\n      def apply(state, event):\n"
        "          return state\n"
    )
    code, report, err = check(capsys, str(manifest))
    assert (code, err, report["findings"]) == (cli.EXIT_OK, [], [])
    assert report["explored"]["aggregate_types"]["plain"]["commands_from"] == []
    assert "add schemas: or examples:" in report["explored"]["aggregate_types"]["plain"]["skipped"]


def test_examples_zero_compiles_only(capsys: pytest.CaptureFixture[str]) -> None:
    code, report, _ = check(capsys, str(MANIFESTS / "apply_failed.yaml"), "--examples", "0")
    assert code == cli.EXIT_OK
    assert "findings" not in report


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ([str(MANIFESTS / "apply_failed.yaml"), "--example", "bank"], "give the manifest once"),
        ([str(MANIFESTS / "apply_failed.yaml"), "--manifest", "x.yaml"], "give the manifest once"),
        (["--example", "bank", "--examples", "-1"], "must be at least 0"),
        (["--example", "bank", "--max-steps", "0"], "must be at least 1"),
        (["--example", "bank", "--seed", "x"], "invalid int value"),
    ],
)
def test_bad_usage_is_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], problem: str
) -> None:
    try:
        code = cli.main(["check", *args])
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    assert code == cli.EXIT_USAGE
    assert problem in capsys.readouterr().err


# ---- the explorer with scripted runners (pure) -----------------------------------------
class Scripted:
    """A runner whose answers come from a function of (call number, state, command)."""

    def __init__(self, where: str, answer: Any, replay: Any = None) -> None:
        self.where = where
        self.answer = answer
        self.replay = replay
        self.calls = 0

    def decide(self, state: dict[str, Any], command: dict[str, Any]) -> Decision:
        self.calls += 1
        result: Decision = self.answer(self.calls, state, command)
        return result

    def apply(self, state: dict[str, Any], events: Any) -> dict[str, Any]:
        if self.replay is not None:
            replayed: dict[str, Any] = self.replay(state, events)
            return replayed
        return {"n": state.get("n", 0) + len(events)}


def counting(calls: int, state: dict[str, Any], command: dict[str, Any]) -> Decision:
    return Accepted([{"type": "Counted"}], {"n": state.get("n", 0) + 1})


TYPE = AggregateTypeManifest(
    name="t",
    decide=ProgramSource("", "test"),
    apply=ProgramSource("", "test"),
    examples=({"type": "Count"},),
)


def test_two_processes_that_disagree_are_non_deterministic() -> None:
    def other(calls: int, state: dict[str, Any], command: dict[str, Any]) -> Decision:
        return Rejected("no") if state.get("n", 0) >= 2 else counting(calls, state, command)

    runners = (Scripted("worker process 1", counting), Scripted("worker process 2", other))
    findings, warnings = explore_type(TYPE, runners, ExploreOptions(examples=30))
    assert warnings == []
    assert [f.kind for f in findings] == [FindingKind.NONDETERMINISTIC]
    assert findings[0].commands == [{"type": "Count"}] * 3
    assert "in worker process 1" in findings[0].message
    assert "in worker process 2 (reject('no'))" in findings[0].message


def test_a_replay_that_builds_another_state_is_non_deterministic() -> None:
    steps = _Steps(
        TYPE,
        (Scripted("a", counting, replay=lambda s, e: {"n": 99}), Scripted("b", counting)),
        ExploreOptions(),
    )
    with pytest.raises(Exception, match="apply, replaying the events decide produced"):
        steps.run([{"type": "Count"}])


def test_a_clean_program_has_no_findings() -> None:
    runners = (Scripted("a", counting), Scripted("b", counting))
    assert explore_type(TYPE, runners, ExploreOptions(examples=20)) == ([], [])


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ProgramLimitError("t: decide ran past its time budget"), FindingKind.OVER_BUDGET),
        (ProgramError("t: apply failed at x.star:3:1: boom"), FindingKind.APPLY_FAILED),
        (ProgramError("t: decide failed at x.star:3:1: boom"), FindingKind.DECIDE_CRASHED),
        (
            ProgramError("t: apply (x) built a state that is refused: state: has a non-string"),
            FindingKind.STATE_NOT_JSON,
        ),
        (
            ProgramError("t: the Starlark interpreter failed in apply (x): panic"),
            FindingKind.APPLY_FAILED,
        ),
        (ProgramError("something else"), FindingKind.DECIDE_CRASHED),
        (
            ProgramError("t: decide failed at x.star:1:1: fail: the payment is refused"),
            FindingKind.DECIDE_CRASHED,
        ),
        (
            ProgramError("t: apply (m:apply) raised ValueError: not plain JSON, it said"),
            FindingKind.APPLY_FAILED,
        ),
    ],
)
def test_program_errors_are_classified(error: ProgramError, kind: FindingKind) -> None:
    assert classify(error) is kind
