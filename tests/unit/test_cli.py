"""The CLI's id arguments: only canonical UUIDs (either case), as the service takes them."""

from __future__ import annotations

import uuid

import pytest

from aggregate.cli import build_parser

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
