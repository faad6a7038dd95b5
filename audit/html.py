"""A self-contained HTML transcript of sessions: messages, timeline, mode switches, tool calls
and canvas changes, with inline CSS and no external assets.

Everything the user or the agent wrote is escaped with `html.escape` before it reaches the
page: a transcript can be opened safely whatever the conversation contained.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone
from html import escape
from typing import Any

from ..events.codec import event_to_builtins
from ..events.model import (
    AgentSessionLost,
    CanvasModified,
    MessageSent,
    ModeSwitched,
    Recorded,
    ResponseReceived,
    RunFailed,
    RunStarted,
    SessionCreated,
    SessionExpired,
    SessionResumed,
    StudyContextSet,
    ToolCall,
    UnknownEvent,
)
from ..events.projections import SessionInfo

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2129}
header.page{background:#1d2129;color:#fff;padding:16px 24px}
header.page h1{margin:0;font-size:20px} header.page p{margin:4px 0 0;color:#b8bfc9}
main{max-width:960px;margin:0 auto;padding:16px}
section.session{background:#fff;border:1px solid #dde1e6;border-radius:8px;margin:16px 0;padding:16px}
section.session h2{margin:0 0 4px;font-size:17px;word-break:break-all}
dl.info{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:8px 0 16px}
dl.info dt{color:#69707a} dl.info dd{margin:0}
ol.timeline{list-style:none;margin:0;padding:0;border-left:2px solid #dde1e6}
ol.timeline li{margin:0 0 12px;padding:0 0 0 14px;position:relative}
ol.timeline li::before{content:"";position:absolute;left:-6px;top:8px;width:10px;height:10px;border-radius:50%;background:#b8bfc9}
.meta{color:#69707a;font-size:12px}
.bubble{border-radius:8px;padding:8px 12px;margin-top:4px;white-space:pre-wrap;word-wrap:break-word}
li.user .bubble{background:#e7f0ff} li.assistant .bubble{background:#eef7ee}
li.failed .bubble{background:#fdecec;color:#8a1c1c}
li.user::before{background:#3b7ddd} li.assistant::before{background:#3c9a4a} li.failed::before{background:#d64545}
li.mode::before,li.study::before,li.lifecycle::before{background:#8a63d2}
li.canvas::before{background:#e0a500}
details{margin-top:6px} summary{cursor:pointer;color:#3b4b63}
pre{background:#f3f4f6;border-radius:6px;padding:8px;overflow:auto;font-size:13px;margin:4px 0}
.tag{display:inline-block;border-radius:4px;padding:0 6px;font-size:12px;background:#eef0f3}
.tag.error{background:#fdecec;color:#8a1c1c}
"""


def _json(value: Any) -> str:
    return escape(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _time(moment: datetime) -> str:
    return escape(moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))


def _tool_call(call: ToolCall) -> str:
    flag = ' <span class="tag error">error</span>' if call.is_error else ""
    return (
        f"<details><summary>tool <code>{escape(call.name)}</code>{flag}</summary>"
        f"<div class=meta>input</div><pre>{_json(call.input)}</pre>"
        f"<div class=meta>output</div><pre>{_json(call.output)}</pre></details>"
    )


def _item(recorded: Recorded) -> tuple[str, str]:
    """(css class, inner HTML) of one timeline entry."""
    event = recorded.event
    if isinstance(event, SessionCreated):
        study = f", study {escape(event.study_id)}" if event.study_id else ""
        return "lifecycle", f"session created in <b>{escape(event.mode)}</b> mode{study}"
    if isinstance(event, SessionResumed):
        return "lifecycle", "session resumed"
    if isinstance(event, StudyContextSet):
        study = escape(event.study_id) if event.study_id else "(none)"
        return "study", f"study set to <b>{study}</b>"
    if isinstance(event, ModeSwitched):
        return "mode", (
            f"mode switched from <b>{escape(event.from_mode)}</b> "
            f"to <b>{escape(event.to_mode)}</b>"
        )
    if isinstance(event, MessageSent):
        canvas = ""
        if event.canvas_state is not None:
            canvas = f"<details><summary>canvas state sent</summary><pre>{_json(event.canvas_state)}</pre></details>"
        return "user", f"<b>user</b>, turn {event.turn}<div class=bubble>{escape(event.text)}</div>{canvas}"
    if isinstance(event, RunStarted):
        argv = escape(" ".join(event.argv))
        return "run", f"agent started (turn {event.turn}, attempt {event.attempt}) <code>{argv}</code>"
    if isinstance(event, ResponseReceived):
        cost = f", ${event.cost_usd:.4f}" if event.cost_usd is not None else ""
        calls = "".join(_tool_call(call) for call in event.tool_calls)
        return "assistant", (
            f"<b>agent</b>, turn {event.turn} ({event.duration:.1f} s{cost})"
            f"<div class=bubble>{escape(event.text)}</div>{calls}"
        )
    if isinstance(event, CanvasModified):
        return "canvas", (
            f"canvas modified (turn {event.turn})<pre>{_json(event.modification)}</pre>"
        )
    if isinstance(event, RunFailed):
        detail = f"<pre>{escape(event.stderr_tail)}</pre>" if event.stderr_tail else ""
        return "failed", (
            f"<b>turn {event.turn} failed</b>: <span class='tag error'>{escape(event.reason)}</span>"
            f"<div class=bubble>{escape(event.message)}</div>{detail}"
        )
    if isinstance(event, AgentSessionLost):
        return "lifecycle", f"agent session {escape(event.agent_session_id)} lost; history sent in the prompt"
    if isinstance(event, SessionExpired):
        return "lifecycle", f"session expired ({escape(event.reason)}, idle {event.idle_seconds:.0f} s)"
    if isinstance(event, UnknownEvent):
        return "lifecycle", f"event <code>{escape(event.type)}</code> (newer release)<pre>{_json(event.fields)}</pre>"
    return "lifecycle", f"<pre>{_json(event_to_builtins(event))}</pre>"


def _session_section(info: SessionInfo, records: Iterable[Recorded]) -> str:
    rows = [
        ("mode", info.mode),
        ("study", info.study_id or "-"),
        ("status", info.status),
        ("created", _time(info.created_at) if info.created_at else "-"),
        ("last active", _time(info.last_active) if info.last_active else "-"),
        ("messages", str(info.message_count)),
        ("cost", f"${info.total_cost_usd:.4f}"),
    ]
    details = "".join(f"<dt>{escape(key)}</dt><dd>{escape(value)}</dd>" for key, value in rows)
    items = []
    for recorded in records:
        css, inner = _item(recorded)
        items.append(
            f"<li class={css} id='p{recorded.position}'><div class=meta>#{recorded.position} · "
            f"v{recorded.version} · {_time(recorded.recorded_at)}</div>{inner}</li>"
        )
    return (
        f"<section class=session><h2>Session {escape(info.session_id)}</h2>"
        f"<dl class=info>{details}</dl><ol class=timeline>{''.join(items)}</ol></section>"
    )


def render_html(sessions: Iterable[tuple[SessionInfo, list[Recorded]]], *, title: str, head: str) -> str:
    """The whole transcript page for the given sessions (info and records each)."""
    sections = "".join(_session_section(info, records) for info, records in sessions)
    generated = _time(datetime.now(timezone.utc))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<header class=page><h1>{escape(title)}</h1>"
        f"<p>exported {generated} · ledger head {escape(head)}</p></header>"
        f"<main>{sections}</main></body></html>\n"
    )
