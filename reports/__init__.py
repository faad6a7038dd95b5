"""Pictures for operators: the ledger's activity per day, drawn as a self-contained HTML page."""

from .daily import DayFigures, daily_figures
from .html import render_stats_html

__all__ = ["DayFigures", "daily_figures", "render_stats_html"]
