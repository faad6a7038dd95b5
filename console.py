"""Terminal helpers for the admin CLI: aligned tables, transcripts, durations, progress bars.

Nothing here touches a ledger; it only turns values into text (and parses durations).
"""

from __future__ import annotations

import math
import re
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import click

from .events.projections import HistoryMessage

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
LONGEST_DURATION = timedelta.max.total_seconds()
"""The longest duration taken (about 2.7 million years): beyond it no date arithmetic works."""


def parse_duration(text: str) -> float:
    """Seconds in a duration like `90`, `45s`, `30m`, `1h30m`, `2d` or `1w`."""
    cleaned = text.strip().lower().replace(" ", "")
    try:
        seconds = float(cleaned)
    except ValueError:
        parts = _DURATION_PART.findall(cleaned)
        if not parts or "".join(number + unit for number, unit in parts) != cleaned:
            raise ValueError(
                f"{text!r} is not a duration: use seconds or units s, m, h, d, w (e.g. 1h30m)"
            ) from None
        seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if not math.isfinite(seconds) or abs(seconds) > LONGEST_DURATION:
        raise ValueError(f"{text!r} is not a finite duration of at most "
                         f"{LONGEST_DURATION:.0f} s: give seconds or units (e.g. 7d)")
    if seconds < 0:
        raise ValueError(f"{text!r}: a duration cannot be negative")
    return seconds


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """A point in time: an ISO date/time (UTC if no zone) or a duration ago (`2h`)."""
    now = now or datetime.now(timezone.utc)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        seconds = parse_duration(text)
        try:
            return now - timedelta(seconds=seconds)
        except OverflowError:
            raise ValueError(
                f"{text!r} reaches back before the year 1: give a shorter duration"
            ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def format_time(moment: datetime | None) -> str:
    """A UTC time as `YYYY-MM-DD HH:MM:SS`, or `-`."""
    if moment is None:
        return "-"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def format_bytes(size: int) -> str:
    """A byte count in B, KiB, MiB or GiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def display_width(text: str) -> int:
    """Columns `text` takes on a terminal: wide (CJK) characters two, combining marks none."""
    width = 0
    for character in text:
        if unicodedata.combining(character) or unicodedata.category(character) in ("Mn", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(character) in ("W", "F") else 1
    return width


def _pad(value: str, width: int, right: bool) -> str:
    fill = " " * max(0, width - display_width(value))
    return fill + value if right else value + fill


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as a table with aligned columns (numbers right-aligned) under a header line."""
    cells = [[str(header) for header in headers]]
    cells += [["-" if value is None else str(value) for value in row] for row in rows]
    numeric = [
        all(isinstance(row[column], (int, float)) for row in rows) if rows else False
        for column in range(len(headers))
    ]
    widths = [max(display_width(row[column]) for row in cells) for column in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            _pad(value, width, right)
            for value, width, right in zip(row, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def format_duration(seconds: float) -> str:
    """A duration as `45s`, `2m20s`, `3h05m` or `2d04h` (the two largest units)."""
    total = int(round(max(0.0, seconds))) if math.isfinite(seconds) else 0
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    """`key: value` lines with the values aligned."""
    width = max((display_width(key) for key, _ in pairs), default=0)
    return "\n".join(f"{key + ':':<{width + 1}} {'-' if value is None else value}" for key, value in pairs)


def transcript(messages: Sequence[HistoryMessage]) -> str:
    """A conversation as readable text: who said what, tool calls and canvas changes."""
    blocks = []
    for message in messages:
        who = {"user": "you", "assistant": "agent", "error": "failed"}.get(message.role, message.role)
        header = click.style(
            f"[turn {message.turn}] {who} · {message.mode} · {format_time(message.timestamp)}",
            bold=True,
            fg={"user": "blue", "assistant": "green", "error": "red"}.get(message.role),
        )
        lines = [header, message.content]
        for call in message.tool_calls:
            flag = " (error)" if call.is_error else ""
            lines.append(click.style(f"  tool {call.name}{flag}: {_short(call.input)}", dim=True))
        for modification in message.canvas_modifications:
            lines.append(click.style(f"  canvas: {_short(modification)}", fg="yellow"))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _short(value: Any, limit: int = 100) -> str:
    import json

    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextmanager
def progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal; silent when piped. Yields `advance(n)`."""
    if not sys.stderr.isatty() or total <= 0:
        yield lambda count: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


def describe_event(event: Any) -> str:
    """One line saying what an event records (for timelines)."""
    from .events.codec import event_to_builtins

    fields = event_to_builtins(event)
    kind = str(fields.pop("type", type(event).__name__))
    return f"{kind:<17} {_event_detail(kind, fields)}".rstrip()


def _event_detail(kind: str, fields: dict[str, Any]) -> str:
    turn = f"turn {fields.get('turn')}"
    if kind == "message_sent":
        return f"{turn}: {_short(fields.get('text', ''), 70)}"
    if kind == "response_received":
        calls = len(fields.get("tool_calls") or ())
        cost = fields.get("cost_usd")
        extra = f", {calls} tool call{'s' * (calls != 1)}" if calls else ""
        extra += f", ${cost:.4f}" if isinstance(cost, (int, float)) else ""
        return f"{turn}{extra}: {_short(fields.get('text', ''), 60)}"
    if kind == "run_started":
        return f"{turn}, attempt {fields.get('attempt', 1)}"
    if kind == "canvas_modified":
        return f"{turn}: {_short(fields.get('modification'), 60)}"
    if kind == "run_failed":
        return f"{turn}: {fields.get('reason')} {_short(fields.get('message', ''), 60)}"
    if kind == "mode_switched":
        return f"{fields.get('from_mode')} -> {fields.get('to_mode')}"
    if kind == "session_created":
        return f"mode {fields.get('mode', 'user')}, study {fields.get('study_id') or '-'}"
    if kind == "study_context_set":
        return str(fields.get("study_id") or "-")
    if kind == "permission_requested":
        return f"{turn}: {fields.get('tool')} {_short(fields.get('input'), 50)}"
    if kind == "permission_decided":
        verdict = "allowed" if fields.get("allow") else "denied"
        return f"{turn}: {verdict} by {fields.get('decided_by') or '-'}"
    if kind == "interrupt_requested":
        return f"{turn}, by {fields.get('requested_by') or '-'}"
    if kind == "session_expired":
        idle = fields.get("idle_seconds", 0)
        idle = idle if isinstance(idle, (int, float)) else 0
        return f"{fields.get('reason', 'idle')}, idle {format_duration(idle)}"
    if kind == "forked_from":
        return (f"from {fields.get('parent_session_id')} at version "
                f"{fields.get('parent_version')} ({str(fields.get('parent_hash', ''))[:16]}...)")
    if kind == "head_checkpointed":
        return (f"head {fields.get('position')}:{str(fields.get('hash', ''))[:16]}... signed by "
                f"{fields.get('key')} ({fields.get('trigger', 'on_demand')})")
    return _short(fields, 70) if fields else ""


class TurnPrinter:
    """Prints a turn's updates on a terminal: streamed text on stdout, annotations (canvas
    changes, tool calls, errors) each on a line of their own on stderr, never glued to
    the text. Called from the thread that delivers updates; keeps only line state."""

    def __init__(self, color: bool | None = None) -> None:
        self.color = color
        self.streamed = False
        self.mid_line = False
        self.tools_shown = False

    def _end_line(self) -> None:
        if self.mid_line:
            click.echo(color=self.color)
            self.mid_line = False

    def _text(self, text: str) -> None:
        if not text:
            return
        click.echo(text, nl=False, color=self.color)
        sys.stdout.flush()
        self.mid_line = not text.endswith("\n")

    def annotate(self, text: str, **style: Any) -> None:
        """One annotation line on stderr, after ending the text's current line."""
        self._end_line()
        sys.stdout.flush()
        click.secho(text, err=True, color=self.color, **style)

    def update(self, update: dict[str, Any]) -> None:
        """Print one update of `Ledger.send` as it arrives."""
        import json

        kind = update.get("type")
        if kind == "text_delta":
            self.streamed = True
            self._text(str(update.get("content", "")))
        elif kind == "text_reset":  # the stream broke and was retried: this is the answer
            self.annotate("[the stream broke and was retried; the answer:]", dim=True)
            self.streamed = True
            self._text(str(update.get("content", "")))
        elif kind == "canvas_modification":
            self.annotate(f"[canvas] {json.dumps(update['modification'], ensure_ascii=False)}",
                          fg="yellow")
        elif kind == "text":
            if not self.streamed:
                self._text(str(update.get("content", "")))
            self._end_line()
        elif kind == "tool_call":
            self.tools_shown = True
            flag = " (error)" if update.get("is_error") else ""
            self.annotate(f"[tool] {update.get('name')}{flag}", dim=True)
        elif kind == "permission_request":
            self.annotate(f"[permission] the agent asks to use {update.get('tool')}", fg="cyan")
        elif kind == "done":
            self._end_line()
            if not self.tools_shown:  # a caller that did not stream them
                for call in update.get("tool_calls") or ():
                    self.annotate(f"[tool] {call.get('name')}", dim=True)
        elif kind == "error":
            self._end_line()
