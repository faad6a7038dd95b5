"""What was spent, per owner, per day (UTC) and per model, from the log's answers.

One pass over `read_all`: each ResponseReceived's cost and tokens (input, output, cache
writes and cache reads), and a RunFailed's when the failed turn still cost something, are
counted for its session's owner (from SessionCreated) and its day, and its `model_usage` for
each model (a turn recorded without one, by an older release or an agent that gives no
`modelUsage`, counts under UNKNOWN_MODEL with its whole cost and usage, so the models add up
to the total). Reads only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from ..events import (
    ModelUsage,
    Recorded,
    ResponseReceived,
    RunFailed,
    SessionCreated,
    TurnRefused,
)
from ..events.projections import usage_tokens

NO_OWNER = "(none)"
UNKNOWN_MODEL = "(not recorded)"


class Spend(msgspec.Struct, kw_only=True):
    """Answers, refused turns, and the USD and tokens (all kinds together, then each kind)
    of the answers and of failed turns that still cost something, of one owner, one day or
    one model."""

    answers: int = 0
    usd: float = 0.0
    tokens: int = 0
    refused: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def add(self, usd: float, input_tokens: int, output_tokens: int, cache_creation: int,
            cache_read: int, *, answer: bool = True) -> None:
        """Count one turn's spend (or one model's share of it); `answer`: it was answered."""
        self.answers += answer
        self.usd += usd
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cache_creation_input_tokens += cache_creation
        self.cache_read_input_tokens += cache_read
        self.tokens += input_tokens + output_tokens + cache_creation + cache_read


class SpendReport(msgspec.Struct, kw_only=True):
    """Spend per owner, per day (ISO date) and per model, each sorted by key."""

    by_owner: dict[str, Spend] = msgspec.field(default_factory=dict)
    by_day: dict[str, Spend] = msgspec.field(default_factory=dict)
    by_model: dict[str, Spend] = msgspec.field(default_factory=dict)


def _count(usage: dict[str, Any] | None, name: str) -> int:
    return usage_tokens({name: usage.get(name)}) if usage else 0


def answer_models(event: ResponseReceived | RunFailed) -> tuple[ModelUsage, ...]:
    """A turn's figures per model: its `model_usage`, or one UNKNOWN_MODEL entry holding
    its whole cost and usage when it has none."""
    if event.model_usage:
        return event.model_usage
    usage = event.usage
    return (ModelUsage(
        model=UNKNOWN_MODEL, cost_usd=event.cost_usd or 0.0,
        input_tokens=_count(usage, "input_tokens"), output_tokens=_count(usage, "output_tokens"),
        cache_creation_input_tokens=_count(usage, "cache_creation_input_tokens"),
        cache_read_input_tokens=_count(usage, "cache_read_input_tokens")),)


def spend_report(records: Iterable[Recorded]) -> SpendReport:
    """Fold the log's records into spend per owner, per day and per model."""
    owners: dict[str, str] = {}
    by_owner: dict[str, Spend] = {}
    by_day: dict[str, Spend] = {}
    by_model: dict[str, Spend] = {}
    for recorded in records:
        event = recorded.event
        if isinstance(event, SessionCreated):
            owners[recorded.session_id] = event.owner or NO_OWNER
            continue
        if not isinstance(event, (ResponseReceived, TurnRefused, RunFailed)):
            continue
        answered = isinstance(event, ResponseReceived)
        if isinstance(event, RunFailed) and not event.cost_usd and not event.usage:
            continue
        owner = owners.get(recorded.session_id, NO_OWNER)
        day = recorded.recorded_at.date().isoformat()
        for spend in (by_owner.setdefault(owner, Spend()), by_day.setdefault(day, Spend())):
            if isinstance(event, TurnRefused):
                spend.refused += 1
            else:
                usage = event.usage
                spend.add(event.cost_usd or 0.0, _count(usage, "input_tokens"),
                          _count(usage, "output_tokens"),
                          _count(usage, "cache_creation_input_tokens"),
                          _count(usage, "cache_read_input_tokens"), answer=answered)
        if not isinstance(event, TurnRefused):
            for model in answer_models(event):
                by_model.setdefault(model.model, Spend()).add(
                    model.cost_usd, model.input_tokens, model.output_tokens,
                    model.cache_creation_input_tokens, model.cache_read_input_tokens,
                    answer=answered)
    return SpendReport(by_owner=dict(sorted(by_owner.items())),
                       by_day=dict(sorted(by_day.items())),
                       by_model=dict(sorted(by_model.items())))
