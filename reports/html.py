"""The operators' page: charts of turns, failures, run time, time to first token and spend
(per model) per day, as one HTML
file with inline SVG (no scripts, no fonts, no external assets: it opens offline and from
mail). Pure: figures in, a string out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape

from ..spend.report import UNKNOWN_MODEL
from .daily import DayFigures

WIDTH, HEIGHT = 760, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 44
PALETTE = ("#3566a8", "#c8553d", "#e0a030", "#5a9e6f", "#8b5fbf", "#5d6d7e", "#d35d9a",
           "#2e8b8b", "#9c6b30", "#444444")

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 820px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
svg { display: block; background: #fafafa; border: 1px solid #ddd; }
svg text { font: 11px sans-serif; fill: #333; }
.legend span { display: inline-block; margin-right: 1.2em; }
.legend i { display: inline-block; width: .8em; height: .8em; margin-right: .3em; }
.note { color: #666; font-size: .9em; }
"""


def _number(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _frame(days: Sequence[str], top_value: float) -> list[str]:
    """Axes, three y ticks and the day labels (thinned to fit)."""
    plot_height = HEIGHT - TOP - BOTTOM
    parts = [f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" '
             f'y2="{HEIGHT - BOTTOM}" stroke="#888"/>',
             f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#888"/>']
    for fraction in (0.0, 0.5, 1.0):
        y = HEIGHT - BOTTOM - fraction * plot_height
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
                     f'stroke="#e4e4e4"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{escape(_number(top_value * fraction))}</text>')
    step = max(1, len(days) // 8)
    slot = (WIDTH - LEFT - RIGHT) / max(len(days), 1)
    for index in range(0, len(days), step):
        x = LEFT + slot * (index + 0.5)
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                     f'{escape(days[index][5:])}</text>')
    return parts


def _svg(label: str, parts: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(label)}" '
            f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">'
            f'<title>{escape(label)}</title>' + "".join(parts) + "</svg>")


def stacked_bars(label: str, days: Sequence[str], series: Mapping[str, Sequence[float]]) -> str:
    """A bar per day, stacked by series (each series a value per day)."""
    totals = [sum(values[index] for values in series.values()) for index in range(len(days))]
    top_value = max(totals, default=0) or 1.0
    parts = _frame(days, top_value)
    plot_height = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(len(days), 1)
    bar = max(slot * 0.7, 1.0)
    for index, day in enumerate(days):
        base = float(HEIGHT - BOTTOM)
        for number, (name, values) in enumerate(series.items()):
            value = values[index]
            if value <= 0:
                continue
            height = value / top_value * plot_height
            base -= height
            x = LEFT + slot * index + (slot - bar) / 2
            parts.append(
                f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}" height="{height:.1f}" '
                f'fill="{PALETTE[number % len(PALETTE)]}"><title>{escape(day)} {escape(name)}: '
                f'{escape(_number(value))}</title></rect>')
    return _svg(label, parts)


def line(label: str, days: Sequence[str], values: Sequence[float | None]) -> str:
    """A line through each day's value (days without one are skipped)."""
    present = [value for value in values if value is not None]
    top_value = max(present, default=0) or 1.0
    parts = _frame(days, top_value)
    plot_height = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(len(days), 1)
    points = [(LEFT + slot * (index + 0.5), HEIGHT - BOTTOM - value / top_value * plot_height,
               days[index], value) for index, value in enumerate(values) if value is not None]
    if points:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{PALETTE[0]}" '
                     f'stroke-width="2"/>')
    for x, y, day, value in points:
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{PALETTE[0]}">'
                     f'<title>{escape(day)}: {escape(_number(value))}</title></circle>')
    return _svg(label, parts)


def _legend(names: Sequence[str]) -> str:
    return '<p class="legend">' + "".join(
        f'<span><i style="background:{PALETTE[number % len(PALETTE)]}"></i>{escape(name)}</span>'
        for number, name in enumerate(names)) + "</p>"


def render_stats_html(days: Sequence[DayFigures], *, ledger: str, generated_at: datetime) -> str:
    """The page: turns, failures by reason, median run time, median time to first token
    and spend by model, per day."""
    labels = [figures.day for figures in days]
    reasons = sorted({reason for figures in days for reason in figures.failures})
    turns = {
        "answered": [float(figures.answers) for figures in days],
        "failed": [float(sum(figures.failures.values())) for figures in days],
        "refused (spend cap)": [float(figures.refused) for figures in days],
    }
    failures = {reason: [float(figures.failures.get(reason, 0)) for figures in days]
                for reason in reasons}
    models = sorted({model for figures in days for model in figures.usd_by_model})
    spend = {model: [figures.usd_by_model.get(model, 0.0) for figures in days]
             for model in models}
    first_tokens = [figures.median_first_token_seconds for figures in days]
    sections = [
        ("Turns per day", _legend(list(turns)) + stacked_bars("Turns per day", labels, turns)),
        ("Failures per day, by reason",
         (_legend(reasons) + stacked_bars("Failures per day", labels, failures)) if reasons
         else '<p class="note">No failures.</p>'),
        ("Median agent run time per day (s)",
         line("Median run time", labels, [figures.median_run_seconds for figures in days])),
        ("Median time to first token per day (s)",
         line("Median time to first token", labels, first_tokens)
         if any(value is not None for value in first_tokens)
         else '<p class="note">No answer recorded its time to first token.</p>'),
        ("Spend per day (USD), by model",
         _legend(models) + stacked_bars("Spend per day", labels, spend)),
        ("Tokens per day (input, output and cache)",
         stacked_bars("Tokens per day", labels,
                      {"tokens": [float(figures.tokens) for figures in days]})),
    ]
    body = "".join(f"<h2>{escape(title)}</h2>{chart}" for title, chart in sections)
    total_usd = sum(figures.usd for figures in days)
    total_turns = sum(figures.turns for figures in days)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>chatledger stats</title>"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>chatledger stats</h1><p>{escape(ledger)} · generated "
        f"{escape(generated_at.strftime('%Y-%m-%d %H:%M UTC'))} · {len(days)} days · "
        f"{total_turns} turns · ${total_usd:.4f}</p>"
        + (body if days else '<p class="note">No turns recorded yet.</p>')
        + '<p class="note">Days are UTC. Time to first token is from the turn\'s start '
          "(RunStarted) to the agent's first text; answers recorded by releases before it "
          "was kept have none. Spend is ResponseReceived's cost per model (its modelUsage); "
          f"answers without one count as {escape(UNKNOWN_MODEL)}.</p></body></html>\n"
    )
