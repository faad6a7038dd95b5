"""The ledger's activity per day (UTC): turns, failures by reason, refused turns, run
durations, times to first token and spend (per model too), folded from the log in one pass.
Reads only; pure over the records."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

import msgspec

from ..events import Recorded, ResponseReceived, RunFailed, TurnRefused
from ..events.projections import usage_tokens
from ..spend.report import answer_models


class DayFigures(msgspec.Struct, kw_only=True):
    """One day's figures."""

    day: str
    answers: int = 0
    failures: dict[str, int] = msgspec.field(default_factory=dict)
    refused: int = 0
    usd: float = 0.0
    tokens: int = 0
    run_seconds: list[float] = msgspec.field(default_factory=list)
    first_token_seconds: list[float] = msgspec.field(default_factory=list)
    usd_by_model: dict[str, float] = msgspec.field(default_factory=dict)

    @property
    def turns(self) -> int:
        """Turns that ended (answered or failed) that day."""
        return self.answers + sum(self.failures.values())

    @property
    def median_run_seconds(self) -> float | None:
        """The median agent run duration of the day's answers."""
        return statistics.median(self.run_seconds) if self.run_seconds else None

    @property
    def median_first_token_seconds(self) -> float | None:
        """The median time to first token of the day's answers that recorded one."""
        return statistics.median(self.first_token_seconds) if self.first_token_seconds \
            else None


def _add_spend(figures: DayFigures, event: ResponseReceived | RunFailed) -> None:
    """Count a turn's cost and tokens, in all and per model."""
    figures.usd += event.cost_usd or 0.0
    figures.tokens += usage_tokens(event.usage)
    for model in answer_models(event):
        figures.usd_by_model[model.model] = \
            figures.usd_by_model.get(model.model, 0.0) + model.cost_usd


def daily_figures(records: Iterable[Recorded]) -> list[DayFigures]:
    """The figures of every day with activity, oldest first."""
    days: dict[str, DayFigures] = {}
    for recorded in records:
        event = recorded.event
        if not isinstance(event, (ResponseReceived, RunFailed, TurnRefused)):
            continue
        day = recorded.recorded_at.date().isoformat()
        figures = days.get(day)
        if figures is None:
            figures = days[day] = DayFigures(day=day)
        if isinstance(event, ResponseReceived):
            figures.answers += 1
            _add_spend(figures, event)
            figures.run_seconds.append(event.duration)
            if event.first_token_seconds is not None:
                figures.first_token_seconds.append(event.first_token_seconds)
        elif isinstance(event, RunFailed):
            figures.failures[event.reason] = figures.failures.get(event.reason, 0) + 1
            if event.cost_usd or event.usage:  # a failed turn that still cost something
                _add_spend(figures, event)
        else:
            figures.refused += 1
    return [days[day] for day in sorted(days)]
