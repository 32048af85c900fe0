"""The bank-account rules, written plainly for the model (no program runtime involved).

The bundled Starlark bank example must behave exactly like this; the property tests drive
the real handler with the real program and compare against these rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

State = dict[str, Any]


@dataclass(frozen=True)
class Rejection:
    reason: str


def decide(state: State, command: dict[str, Any]) -> list[dict[str, Any]] | Rejection:
    kind = command["type"]
    opened = "owner" in state
    if kind == "OpenAccount":
        if opened:
            return Rejection("account already opened")
        owner = command.get("owner")
        if not isinstance(owner, str) or not owner:
            return Rejection("owner must be a non-empty string")
        return [{"type": "AccountOpened", "owner": owner}]
    if kind not in ("Deposit", "Withdraw"):
        return Rejection(f"unknown command type {kind}")
    if not opened:
        return Rejection("account not opened")
    amount = command.get("amount")
    if type(amount) is not int or amount <= 0:
        return Rejection("amount must be a positive integer")
    if kind == "Deposit":
        return [{"type": "MoneyDeposited", "amount": amount}]
    if amount > state["balance"]:
        return Rejection("insufficient funds")
    return [{"type": "MoneyWithdrawn", "amount": amount}]


def apply(state: State, event: dict[str, Any]) -> State:
    kind = event["type"]
    if kind == "AccountOpened":
        return {"owner": event["owner"], "balance": 0}
    if kind == "MoneyDeposited":
        return {**state, "balance": state["balance"] + event["amount"]}
    if kind == "MoneyWithdrawn":
        return {**state, "balance": state["balance"] - event["amount"]}
    raise ValueError(f"unknown event {kind}")


DEPOSIT_CAP = 50


def decide_capped(state: State, command: dict[str, Any]) -> list[dict[str, Any]] | Rejection:
    """The rules a reload switches to and back from: ``decide`` with deposits above
    ``DEPOSIT_CAP`` refused (``apply`` is unchanged, so replays agree with cached states)."""
    if command["type"] == "Deposit" and "owner" in state:
        amount = command.get("amount")
        if type(amount) is int and amount > DEPOSIT_CAP:
            return Rejection(f"deposits above {DEPOSIT_CAP} are refused")
    return decide(state, command)
