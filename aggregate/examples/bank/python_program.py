"""The bank-account example as trusted Python functions (same behaviour as the Starlark
programs next to this file; tests compare them)."""

from __future__ import annotations

from typing import Any

from aggregate.programs.base import Rejected


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def decide(state: dict[str, Any], command: dict[str, Any]) -> list[dict[str, Any]] | Rejected:
    """Events for ``command`` (OpenAccount, Deposit, Withdraw), or a rejection."""
    kind = command["type"]
    opened = "owner" in state
    if kind == "OpenAccount":
        if opened:
            return Rejected("account already opened")
        owner = command.get("owner")
        if not isinstance(owner, str) or not owner:
            return Rejected("owner must be a non-empty string")
        return [{"type": "AccountOpened", "owner": owner}]
    if kind not in ("Deposit", "Withdraw"):
        return Rejected(f"unknown command type {kind}")
    if not opened:
        return Rejected("account not opened")
    amount = command.get("amount")
    if not _positive_int(amount):
        return Rejected("amount must be a positive integer")
    assert isinstance(amount, int)
    if kind == "Deposit":
        return [{"type": "MoneyDeposited", "amount": amount}]
    if amount > state["balance"]:
        return Rejected(f"insufficient funds: balance {state['balance']}, requested {amount}")
    return [{"type": "MoneyWithdrawn", "amount": amount}]


def apply(state: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The state after ``event``."""
    kind = event["type"]
    if kind == "AccountOpened":
        return {"owner": event["owner"], "balance": 0}
    if kind == "MoneyDeposited":
        return {**state, "balance": state["balance"] + event["amount"]}
    if kind == "MoneyWithdrawn":
        return {**state, "balance": state["balance"] - event["amount"]}
    raise ValueError(f"unknown event type {kind}")
