"""Spend caps: per session (a BudgetSet on its stream) and per owner (a BudgetSet on the
owner's budget stream, a reserved stream no session uses), in USD and in tokens.

A turn is refused before it starts when what was spent so far has reached a cap (a turn's
cost is known only when it ends, so the turn that crosses a cap runs; the next one is
refused). Raising the cap lets the session go on. Reads the index only; owner spend is summed
over the owner's sessions in the index, and only when the owner has a cap.
"""

from __future__ import annotations

import hashlib

import msgspec

from ..actors.annotations import check_cap
from ..errors import ChatledgerError, ConcurrencyError
from ..events import BudgetSet, SessionInfo, TurnRefused
from ..storage import EventStore

OWNER_STREAM_PREFIX = "~budget-"
"""Owner budget streams start with the listing's reserved prefix (`~`): never listed."""
MAX_APPEND_ATTEMPTS = 8


class BudgetExceededError(ChatledgerError):
    """A spend cap refused a turn (raised by callers that want an exception)."""


class OwnerBudget(msgspec.Struct, frozen=True, kw_only=True):
    """An owner's caps and what the owner's sessions have spent."""

    owner: str
    usd: float | None = None
    tokens: int | None = None
    spent_usd: float = 0.0
    spent_tokens: int = 0


def owner_budget_stream(owner: str) -> str:
    """The id of the stream that holds an owner's caps."""
    return OWNER_STREAM_PREFIX + hashlib.sha256(owner.encode()).hexdigest()[:48]


def owner_spend(log: EventStore, owner: str) -> tuple[float, int]:
    """USD and tokens the owner's sessions have spent (from the index)."""
    usd, tokens = 0.0, 0
    for info in log.sessions():
        if info.owner == owner:
            usd += info.total_cost_usd
            tokens += info.total_tokens
    return usd, tokens


def owner_budget(log: EventStore, owner: str) -> OwnerBudget:
    """An owner's caps (from the owner's budget stream) and spend."""
    info = log.info(owner_budget_stream(owner))
    usd, tokens = owner_spend(log, owner)
    return OwnerBudget(owner=owner, usd=info.budget_usd if info else None,
                       tokens=info.budget_tokens if info else None,
                       spent_usd=usd, spent_tokens=tokens)


def set_owner_budget(
    log: EventStore, owner: str, *, usd: float | None, tokens: int | None
) -> OwnerBudget:
    """Record an owner's caps (None: no cap of that kind); retried if another writer raced."""
    check_cap(usd, tokens)
    stream = owner_budget_stream(owner)
    event = BudgetSet(owner=owner, usd=float(usd) if usd is not None else None, tokens=tokens)
    for attempt in range(1, MAX_APPEND_ATTEMPTS + 1):
        info = log.info(stream)
        if info is not None and (info.budget_usd, info.budget_tokens) == (event.usd, tokens):
            break
        try:
            log.append(stream, [event], info.version if info else 0)
            break
        except ConcurrencyError:
            if attempt == MAX_APPEND_ATTEMPTS:
                raise
    return owner_budget(log, owner)


def _over(spent_usd: float, spent_tokens: int, cap_usd: float | None,
          cap_tokens: int | None) -> bool:
    return (cap_usd is not None and spent_usd >= cap_usd) or (
        cap_tokens is not None and spent_tokens >= cap_tokens)


def _refusal(scope: str, who: str, spent_usd: float, spent_tokens: int, cap_usd: float | None,
             cap_tokens: int | None) -> TurnRefused:
    caps = " and ".join(part for part in (
        f"${cap_usd:.4f}" if cap_usd is not None else "",
        f"{cap_tokens} tokens" if cap_tokens is not None else "") if part)
    how = "chatledger budget --owner OWNER" if scope == "owner" else "chatledger budget ID"
    message = (f"budget exceeded: {who} has spent ${spent_usd:.4f} and {spent_tokens} tokens "
               f"of a cap of {caps}; raise the cap ({how} --usd N) to go on")
    return TurnRefused(scope=scope, message=message, spent_usd=spent_usd,
                       spent_tokens=spent_tokens, cap_usd=cap_usd, cap_tokens=cap_tokens)


def budget_refusal(info: SessionInfo, log: EventStore) -> TurnRefused | None:
    """The TurnRefused that records why a turn of this session may not start (None: it may).
    Checks the session's caps, then its owner's (short index reads)."""
    if _over(info.total_cost_usd, info.total_tokens, info.budget_usd, info.budget_tokens):
        return _refusal("session", "this session", info.total_cost_usd, info.total_tokens,
                        info.budget_usd, info.budget_tokens)
    if info.owner is None:
        return None
    caps = log.info(owner_budget_stream(info.owner))
    if caps is None or (caps.budget_usd is None and caps.budget_tokens is None):
        return None
    usd, tokens = owner_spend(log, info.owner)
    if _over(usd, tokens, caps.budget_usd, caps.budget_tokens):
        return _refusal("owner", f"owner {info.owner!r}", usd, tokens, caps.budget_usd,
                        caps.budget_tokens)
    return None
