"""Tokens and cost per model, from claude's `modelUsage`, and a warm process's cumulative
figures turned into one turn's.

claude's result line carries `modelUsage`: `{MODEL: {"inputTokens", "outputTokens",
"cacheReadInputTokens", "cacheCreationInputTokens", "costUSD", ...}}`. In a one-turn process
it is the turn's; in a live process it is cumulative over the process (as `total_cost_usd`
is), so a turn's share is the difference against the previous result of the same process.
Pure functions: no I/O, and never raise on what the agent printed (odd values count as 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..events import ModelUsage

_FIELDS = (
    ("input_tokens", "inputTokens"),
    ("output_tokens", "outputTokens"),
    ("cache_creation_input_tokens", "cacheCreationInputTokens"),
    ("cache_read_input_tokens", "cacheReadInputTokens"),
)
"""ModelUsage field -> claude's key."""


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return max(0, int(value))


def _cost(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    value = float(value)
    return value if math.isfinite(value) and value > 0 else 0.0


def parse_model_usage(raw: Any) -> tuple[ModelUsage, ...]:
    """claude's `modelUsage` object as ModelUsage structs, sorted by model (empty if absent
    or not an object; entries that are not objects are skipped)."""
    if not isinstance(raw, dict):
        return ()
    parsed = []
    for model, figures in raw.items():
        if not isinstance(model, str) or not isinstance(figures, dict):
            continue
        parsed.append(ModelUsage(
            model=model, cost_usd=_cost(figures.get("costUSD")),
            **{field: _count(figures.get(key)) for field, key in _FIELDS}))
    return tuple(sorted(parsed, key=lambda usage: usage.model))


def usage_since(current: Iterable[ModelUsage],
                previous: Iterable[ModelUsage]) -> tuple[ModelUsage, ...]:
    """One turn's figures from a process's cumulative ones after it (`current`) and before
    it (`previous`): per model, the difference (never below 0; a model new in `current`
    counts whole). Models with nothing in the turn are left out."""
    before = {usage.model: usage for usage in previous}
    turn = []
    for usage in current:
        earlier = before.get(usage.model)
        if earlier is None:
            share = usage
        else:
            share = ModelUsage(
                model=usage.model,
                cost_usd=round(max(0.0, usage.cost_usd - earlier.cost_usd), 10),
                **{field: max(0, getattr(usage, field) - getattr(earlier, field))
                   for field, _ in _FIELDS})
        if share.tokens or share.cost_usd:
            turn.append(share)
    return tuple(turn)


def merged_usage(first: Iterable[ModelUsage],
                 second: Iterable[ModelUsage]) -> tuple[ModelUsage, ...]:
    """Per model, the larger figure of the two (a cumulative total that must never go back:
    a result without a model keeps what the process had counted for it)."""
    merged = {usage.model: usage for usage in first}
    for usage in second:
        earlier = merged.get(usage.model)
        if earlier is None:
            merged[usage.model] = usage
            continue
        merged[usage.model] = ModelUsage(
            model=usage.model, cost_usd=max(usage.cost_usd, earlier.cost_usd),
            **{field: max(getattr(usage, field), getattr(earlier, field))
               for field, _ in _FIELDS})
    return tuple(merged[model] for model in sorted(merged))
