"""What was spent, per owner and per day (UTC), from the log's answers.

One pass over `read_all`: each ResponseReceived's cost and tokens (input, output and cache
tokens) are counted for its session's owner (from SessionCreated) and its day. Reads only.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from ..events import Recorded, ResponseReceived, SessionCreated, TurnRefused
from ..events.projections import usage_tokens

NO_OWNER = "(none)"


class Spend(msgspec.Struct, kw_only=True):
    """Answers, their USD and tokens, and refused turns, of one owner or one day."""

    answers: int = 0
    usd: float = 0.0
    tokens: int = 0
    refused: int = 0


class SpendReport(msgspec.Struct, kw_only=True):
    """Spend per owner and per day (ISO date), each sorted by key."""

    by_owner: dict[str, Spend] = msgspec.field(default_factory=dict)
    by_day: dict[str, Spend] = msgspec.field(default_factory=dict)


def spend_report(records: Iterable[Recorded]) -> SpendReport:
    """Fold the log's records into spend per owner and per day."""
    owners: dict[str, str] = {}
    by_owner: dict[str, Spend] = {}
    by_day: dict[str, Spend] = {}
    for recorded in records:
        event = recorded.event
        if isinstance(event, SessionCreated):
            owners[recorded.session_id] = event.owner or NO_OWNER
            continue
        if not isinstance(event, (ResponseReceived, TurnRefused)):
            continue
        owner = owners.get(recorded.session_id, NO_OWNER)
        day = recorded.recorded_at.date().isoformat()
        for spend in (by_owner.setdefault(owner, Spend()), by_day.setdefault(day, Spend())):
            if isinstance(event, TurnRefused):
                spend.refused += 1
            else:
                spend.answers += 1
                spend.usd += event.cost_usd or 0.0
                spend.tokens += usage_tokens(event.usage)
    return SpendReport(by_owner=dict(sorted(by_owner.items())),
                       by_day=dict(sorted(by_day.items())))
