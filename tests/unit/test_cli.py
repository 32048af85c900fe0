"""The ``aggregate`` command line: exit codes, messages and help texts (in process; the
verbs that talk to a service are driven end to end in tests/integration)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest

import aggregate
from aggregate.adapters.nats_server import free_port
from aggregate.cli import build_parser, main
from aggregate.config.values import LOG_LEVELS

ROOT = Path(__file__).resolve().parents[2]
BANK_MANIFEST = ROOT / "aggregate" / "examples" / "bank" / "manifest.yaml"


@pytest.fixture(autouse=True)
def _no_aggregate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("AGGREGATE_")]:
        monkeypatch.delenv(name)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aggregate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def help_of(capsys: pytest.CaptureFixture[str], *verb: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*verb, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


# ---- version and packaging entry points ----------------------------------------------
def test_one_version_everywhere() -> None:
    assert aggregate.__version__ == version("aggregate")
    result = run_cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"aggregate {version('aggregate')}")


# ---- usage errors: exit code 2, one line -----------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "-T", "bank-account"], "give the command type"),
        (["submit", "-T", "bank-account", "--json", "{oops"], "--json is not valid JSON"),
        (["submit", "-T", "bank-account", "--json", "[1]"], "--json must be a JSON object"),
        (["check", "--example", "bank", "--manifest", str(BANK_MANIFEST)], "not both"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"aggregate {args[0]}: ")
    assert message in err[0]


def test_a_bad_config_file_is_blamed_on_the_option_that_named_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["check", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "named by command-line option --config" in err
    assert "environment variable" not in err


def test_a_bad_option_value_names_the_option(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["check", "--example", "bank", "--nats-url", "http://x"]) == 2
    assert "command-line option --nats-url" in capsys.readouterr().err


# ---- check --manifest ----------------------------------------------------------------
def test_check_takes_a_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--manifest", str(BANK_MANIFEST)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] is True
    assert str(BANK_MANIFEST) in summary["manifest"]
    assert "bank-account" in summary["aggregate_types"]


# ---- help texts ----------------------------------------------------------------------
def description_of(text: str) -> str:
    """The paragraph between the usage lines and the option list."""
    body = text.split("\n\n", 1)[1]
    return body.split("options:", 1)[0].strip()


@pytest.mark.parametrize("verb", ["serve", "submit", "get", "events", "check", "ready", "watch"])
def test_every_verb_has_a_description(capsys: pytest.CaptureFixture[str], verb: str) -> None:
    assert len(description_of(help_of(capsys, verb))) > 40


@pytest.mark.parametrize("verb", ["events", "check", "ready"])
def test_only_serve_speaks_of_serving_an_example(
    capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    text = help_of(capsys, verb)
    for line in re.findall(r"--example.*(?:\n {20,}.*)*", text):
        assert "serve" not in line, line


def test_log_level_help_lists_every_level(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_of(capsys, "serve").split())
    for level in LOG_LEVELS:
        assert level in text.split("--log-level LEVEL", 1)[1].split("(AGGREGATE_LOG_LEVEL)")[0]


def test_every_log_level_is_accepted() -> None:
    parser = build_parser()
    for level in (*LOG_LEVELS, "WARN"):
        assert parser.parse_args(["serve", "--log-level", level]).log_level in (
            *LOG_LEVELS,
            "warn",
        )


def test_the_top_level_help_states_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_of(capsys).split())
    for code in ("0 ok", "1 refused", "2 bad usage", "3 service or NATS unreachable"):
        assert code in text


# ---- a reader that goes away ---------------------------------------------------------
@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("args", [["check", "--example", "bank"], ["--help"]])
def test_a_closed_output_pipe_is_not_a_traceback(args: list[str], buffered: bool) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aggregate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # as `| head` does once it has read enough
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err
    assert "BrokenPipeError" not in err
    # argparse itself ignores a failed write of --help when stdout is unbuffered (exit 0)
    expected = (0, 141) if args == ["--help"] else (141,)
    assert proc.returncode in expected, err


# ---- events with NATS gone (a stale embedded-nats.url) ---------------------------------
def test_events_with_nats_gone_exits_3_within_its_timeout(tmp_path: Path) -> None:
    (tmp_path / "embedded-nats.url").write_text(f"nats://127.0.0.1:{free_port()}\n")
    started = time.monotonic()
    result = run_cli(
        "events",
        *("-T", "bank-account", "--id", "0190a0f0-0000-7000-8000-000000000001"),
        *("--storage", str(tmp_path), "--timeout", "2"),
        timeout=2 + 2 + 10,  # + interpreter start-up
    )
    print(f"events with NATS gone: exit {result.returncode} in {time.monotonic() - started:.2f} s")
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("aggregate events: cannot connect to NATS at nats://127.0.0.1:")
    assert "within 2 s (--timeout)" in lines[0]


# ---- ready: the container health check -------------------------------------------------
@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
def test_ready_probes_the_configured_admin_address(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, bind: str
) -> None:
    port = free_port()
    monkeypatch.setenv("AGGREGATE_HTTP_ADDR", f"{bind}:{port}")
    assert main(["ready", "--timeout", "2"]) == 3  # nothing listens there
    err = capsys.readouterr().err
    assert f"cannot reach the admin HTTP server at 127.0.0.1:{port}" in err


# --- id arguments: only canonical UUIDs (either case), as the service takes them ---

ID = "0190f3c2-7a4b-7c3d-8e5f-1a2b3c4d5e6f"


@pytest.mark.parametrize("text", [ID, ID.upper()])
def test_canonical_ids_are_accepted(text: str) -> None:
    args = build_parser().parse_args(["get", "-T", "bank-account", "--id", text])
    assert args.id == uuid.UUID(ID)
    submit = build_parser().parse_args(["submit", "-T", "t", "--command-id", text, "Open"])
    assert submit.command_id == uuid.UUID(ID)


@pytest.mark.parametrize(
    "text", [" " + ID[1:], "{" + ID + "}", "urn:uuid:" + ID, ID.replace("-", ""), "+" + ID[1:]]
)
@pytest.mark.parametrize("verb", [["get"], ["events"], ["submit", "Open"]])
def test_other_spellings_are_usage_errors(
    text: str, verb: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args([*verb, "-T", "bank-account", "--id", text])
    assert caught.value.code == 2
    assert "is not a UUID" in capsys.readouterr().err


def test_watch_takes_a_position_and_refuses_a_negative_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(["watch", "-T", "bank-account", "--from", "42"])
    assert (args.from_position, args.count, args.state) == (42, None, False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["watch", "-T", "bank-account", "--from", "-1"])
    assert "whole number" in capsys.readouterr().err


@pytest.mark.parametrize("entry", ["aggregate", "aggregate.cli"])
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["ingest"], "give --once"),
        (["check", "a.yaml", "--manifest", "b.yaml"], "give the manifest once"),
    ],
)
def test_a_usage_error_of_a_verb_in_its_own_module_exits_2_from_either_entry(
    entry: str, args: list[str], says: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", entry, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr.count("\n")) == (2, 1), done.stderr
    assert says in done.stderr


@pytest.mark.parametrize("option", ["--min-position", "--page-size"])
def test_a_negative_query_number_is_refused_before_any_call(
    capsys: pytest.CaptureFixture[str], option: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["query", "-T", "bank-account", option, "-1", "--addr", "127.0.0.1:1"])
    assert exit_info.value.code == 2
    assert f"argument {option}: expected a whole number >= 0" in capsys.readouterr().err
