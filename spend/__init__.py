"""Spend: caps per session and per owner (USD and tokens), checked before a turn starts, and
reports of what was spent per owner and per day."""

from .caps import (
    BudgetExceededError,
    OwnerBudget,
    budget_refusal,
    owner_budget,
    owner_budget_stream,
    owner_spend,
    set_owner_budget,
)
from .report import SpendReport, spend_report

__all__ = [
    "BudgetExceededError",
    "OwnerBudget",
    "SpendReport",
    "budget_refusal",
    "owner_budget",
    "owner_budget_stream",
    "owner_spend",
    "set_owner_budget",
    "spend_report",
]
