"""Error messages quote, never echo: short prefixes of client input, bounded messages, and
INTERNAL answers that carry nothing the client sent."""

from __future__ import annotations

import pytest

from aggregate.domain import errors as e
from aggregate.domain.errors import MAX_MESSAGE_BYTES, InvalidArgumentError, bound_message, quote
from aggregate.domain.ids import validate_aggregate_type, validate_tenant_id
from aggregate.domain.status import public_message, status_of


def test_quote_shows_short_values_whole_and_long_ones_cut() -> None:
    assert quote("acme") == "'acme'"
    assert quote("x" * 64) == repr("x" * 64)
    assert quote("x" * 10_000) == f"{'x' * 64!r}…(10000 chars)"
    assert quote("\ud800\x00") == "'\\ud800\\x00'"  # printable, and encodes to UTF-8
    assert quote("abcdef", 3) == "'abc'…(6 chars)"


def test_quote_keeps_other_values_short() -> None:
    assert quote(None) == "None"
    assert quote(42) == "42"
    assert len(quote(list(range(10_000)))) < 100
    assert len(quote({"k" * 1000: ["v" * 1000] * 1000})) < 300
    assert quote(10**5000) == "<int of 16610 bits>"  # repr() of it would raise


def test_bound_message_cuts_at_a_byte_limit_on_a_character_boundary() -> None:
    assert bound_message("short") == "short"
    cut = bound_message("r" * 1_000_000)
    assert cut.endswith("…(1000000 chars)")
    assert len(cut.encode()) <= MAX_MESSAGE_BYTES
    assert cut.startswith("r" * 1000)
    wide = bound_message("€" * 2000, 100)
    assert len(wide.encode()) <= 100
    assert wide == "€" * 28 + "…(2000 chars)"
    assert bound_message("a\ud800b") == "a\ufffdb"
    assert bound_message("é" * 512) == "é" * 512  # 1,024 bytes: not cut


@pytest.mark.parametrize("check", [validate_tenant_id, validate_aggregate_type])
def test_token_errors_quote_a_prefix(check: object) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check("x" * 10_000)  # type: ignore[operator]
    assert "…(10000 chars)" in caught.value.message
    assert len(caught.value.message) < 200


def test_unknown_type_lists_at_most_ten_configured_types() -> None:
    error = e.UnknownAggregateTypeError.of("y" * 5000, [f"t{n:02d}" for n in range(30)])
    assert error.message == (
        f"aggregate type {'y' * 64!r}…(5000 chars) is not configured; configured types: "
        "t00, t01, t02, t03, t04, t05, t06, t07, t08, t09 and 20 more"
    )
    assert e.UnknownAggregateTypeError.of("x", []).message.endswith("configured types: none")


# --- what a client is told ----------------------------------------------------------------


def test_a_program_error_tells_the_client_where_not_what() -> None:
    error = e.ProgramError(
        "bank: decide failed at /srv/bank/decide.star:3:5: fail: cannot take 'secret'\n"
        '  3 |     fail("cannot take " + command["secret"])',
        program="bank",
        origin="/srv/bank/decide.star",
        line=3,
        column=5,
    )
    assert status_of(error) == ("INTERNAL", 500)
    message = public_message(error)
    assert message.startswith("the program of aggregate type bank failed at line 3, column 5;")
    assert "correlation id" in message
    assert "secret" not in message
    assert "/srv" not in message
    assert public_message(e.ProgramError("worker error")).startswith("a program failed;")


def test_every_public_message_is_bounded() -> None:
    for error in (
        e.CommandRejectedError("r" * 100_000),
        e.InvalidArgumentError("i" * 100_000),
        e.TenantUnavailableError("u\ud800" * 100_000),
        TimeoutError("v" * 100_000),
    ):
        message = public_message(error)
        assert len(message.encode()) <= MAX_MESSAGE_BYTES
        assert message.endswith("chars)")
    assert public_message(e.CommandRejectedError("insufficient funds")) == "insufficient funds"
