"""A self-contained HTML transcript that holds up as evidence: the verification result at the
top, then each session's messages, timeline, mode switches, tool calls and canvas changes,
each record with its position, version, time and hash. Inline CSS, no script, no external
assets; tool calls and canvas states are open on screen and forced open in print.

Everything the user or the agent wrote is escaped with `html.escape` before it reaches the
page, attributes included: a transcript can be opened safely whatever the conversation
contained (a `<script>` or an `onerror=` in a message is shown as text, never run).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from html import escape
from typing import Any

from ..events.codec import decode_record, event_to_builtins
from ..events.model import (
    AgentSessionLost,
    CanvasModified,
    MessageSent,
    ModeSwitched,
    Recorded,
    Redacted,
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
from ..storage import AuditStore
from ..storage.hashing import HASH_SIZE
from .attest import LedgerCheck, describe_check

SessionRecords = tuple[SessionInfo, list[tuple[Recorded, bytes]]]
"""A session's info and its records, each with its stored hash."""

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2129}
header.page{background:#1d2129;color:#fff;padding:16px 24px}
header.page h1{margin:0;font-size:20px} header.page p{margin:4px 0 0;color:#b8bfc9}
main{max-width:960px;margin:0 auto;padding:16px}
.stamp{border-radius:8px;padding:12px 16px;margin:16px 0;border:2px solid}
.stamp h2{margin:0 0 4px;font-size:18px}
.stamp.clean{background:#eef7ee;border-color:#3c9a4a;color:#1f5a28}
.stamp.tampered{background:#fdecec;border-color:#d64545;color:#8a1c1c}
.stamp dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:8px 0 0}
.stamp dt{font-weight:600} .stamp dd{margin:0;word-break:break-all}
nav.toc{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:8px 16px}
nav.toc h2{font-size:16px;margin:4px 0}
section.session{background:#fff;border:1px solid #dde1e6;border-radius:8px;margin:16px 0;padding:16px}
section.session h2{margin:0 0 4px;font-size:17px;word-break:break-all}
dl.info{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:8px 0 16px}
dl.info dt{color:#69707a} dl.info dd{margin:0}
ol.timeline{list-style:none;margin:0;padding:0;border-left:2px solid #dde1e6}
ol.timeline li{margin:0 0 12px;padding:0 0 0 14px;position:relative}
ol.timeline li::before{content:"";position:absolute;left:-6px;top:8px;width:10px;height:10px;border-radius:50%;background:#b8bfc9}
.meta{color:#69707a;font-size:12px}
code.hash{font-size:11px;word-break:break-all;color:#4b5563}
.bubble{border-radius:8px;padding:8px 12px;margin-top:4px;white-space:pre-wrap;word-wrap:break-word}
li.user .bubble{background:#e7f0ff} li.assistant .bubble{background:#eef7ee}
li.failed .bubble{background:#fdecec;color:#8a1c1c}
li.user::before{background:#3b7ddd} li.assistant::before{background:#3c9a4a} li.failed::before{background:#d64545}
li.mode::before,li.study::before,li.lifecycle::before{background:#8a63d2}
li.canvas::before{background:#e0a500}
details{margin-top:6px} summary{cursor:pointer;color:#3b4b63}
pre{background:#f3f4f6;border-radius:6px;padding:8px;overflow:auto;font-size:13px;margin:4px 0;white-space:pre-wrap;word-wrap:break-word}
.tag{display:inline-block;border-radius:4px;padding:0 6px;font-size:12px;background:#eef0f3}
.tag.error{background:#fdecec;color:#8a1c1c}
@media print{
body{background:#fff;font-size:11pt}
header.page{background:#fff;color:#000;border-bottom:2px solid #000}
header.page p{color:#333}
details::details-content{content-visibility:visible;display:block}
details>summary{list-style:none}
section.session{border:none;padding:0}
li{break-inside:avoid}
pre{overflow:visible}
}
"""


def _json(value: Any) -> str:
    return escape(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _time(moment: datetime) -> str:
    return escape(moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))


def _tool_call(call: ToolCall) -> str:
    flag = ' <span class="tag error">error</span>' if call.is_error else ""
    return (
        f"<details open class=tool><summary>tool <code>{escape(call.name)}</code>{flag}</summary>"
        f"<div class=meta>input</div><pre>{_json(call.input)}</pre>"
        f"<div class=meta>result</div><pre>{_json(call.output)}</pre></details>"
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
            canvas = (f"<details open class=canvas-state><summary>canvas state sent</summary>"
                      f"<pre>{_json(event.canvas_state)}</pre></details>")
        return "user", f"<b>user</b>, turn {event.turn}<div class=bubble>{escape(event.text)}</div>{canvas}"
    if isinstance(event, RunStarted):
        argv = escape(shlex.join(event.argv))
        return "run", f"agent started (turn {event.turn}, attempt {event.attempt}) <code>{argv}</code>"
    if isinstance(event, ResponseReceived):
        cost = f", ${event.cost_usd:.4f}" if event.cost_usd is not None else ""
        calls = "".join(_tool_call(call) for call in event.tool_calls)
        return "assistant", (
            f"<b>agent</b>, turn {event.turn} ({event.duration:.1f} s{cost}, exit code "
            f"{event.exit_code}){calls}<div class=bubble>{escape(event.text)}</div>"
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
    if isinstance(event, Redacted):
        by = f" by {escape(event.redacted_by)}" if event.redacted_by else ""
        reason = f": {escape(event.reason)}" if event.reason else ""
        return "lifecycle", (
            f"content of <a href='#p{event.position}'>version {event.version}</a> "
            f"({escape(event.event_type)}) <b>redacted</b>{by}{reason}; its commitment "
            f"<code class=hash>{event.commitment.hex()}</code> stays in the hash chain"
        )
    if isinstance(event, UnknownEvent):
        return "lifecycle", f"event <code>{escape(event.type)}</code> (newer release)<pre>{_json(event.fields)}</pre>"
    return "lifecycle", f"<pre>{_json(event_to_builtins(event))}</pre>"


def _session_section(number: int, info: SessionInfo, records: list[tuple[Recorded, bytes]]) -> str:
    rows = [
        ("mode", info.mode),
        ("study", info.study_id or "-"),
        ("status", info.status),
        ("created", _time(info.created_at) if info.created_at else "-"),
        ("last active", _time(info.last_active) if info.last_active else "-"),
        ("messages", str(info.message_count)),
        ("cost", f"${info.total_cost_usd:.4f}"),
        ("versions", str(info.version)),
    ]
    details = "".join(f"<dt>{escape(key)}</dt><dd>{escape(value)}</dd>" for key, value in rows)
    items = []
    redacted = {recorded.event.version for recorded, _ in records
                if isinstance(recorded.event, Redacted)}
    for recorded, digest in records:
        css, inner = _item(recorded)
        mark = " · <b>[redacted]</b>" if recorded.version in redacted else ""
        items.append(
            f"<li class={css} id='p{recorded.position}'><div class=meta>"
            f"position {recorded.position} · version {recorded.version} · "
            f"{_time(recorded.recorded_at)} · hash <code class=hash>{digest.hex()}</code>"
            f"{mark}</div>{inner}</li>"
        )
    return (
        f"<section class=session id='s{number}'><h2>Session {escape(info.session_id)}</h2>"
        f"<dl class=info>{details}</dl><ol class=timeline>{''.join(items)}</ol></section>"
    )


def _stamp(check: LedgerCheck | None, head: str) -> str:
    """The verification result: clean or tampered, when, the head, its signature."""
    if check is None:
        return (f"<div class='stamp tampered' id=verification><h2>NOT VERIFIED</h2>"
                f"<p>This transcript was written without a check of the ledger.</p>"
                f"<dl><dt>ledger head</dt><dd>{escape(head)}</dd></dl></div>")
    verdict = "clean" if check.ok else "tampered"
    title = "VERIFIED" if check.ok else "TAMPERED"
    rows = [
        ("result", describe_check(check)),
        ("checked", _time(check.checked_at)),
        ("ledger head", str(check.head)),
    ]
    if check.anchor is not None:
        rows.append(("anchored head", check.anchor.message))
    for problem in check.problems[1:6]:
        rows.append(("also", problem))
    signed = check.signed_head
    if signed is not None:
        rows += [("signed head", f"{signed.position}:{signed.hash}"),
                 ("signed at", signed.signed_at),
                 ("key fingerprint", signed.key),
                 ("signature", signed.signature)]
    else:
        rows.append(("signed head", "none (the ledger failed verification or has no key)"))
    details = "".join(f"<dt>{escape(key)}</dt><dd>{escape(value)}</dd>" for key, value in rows)
    role = " role=alert" if not check.ok else ""
    return (f"<div class='stamp {verdict}' id=verification{role}><h2>{title}</h2>"
            f"<dl>{details}</dl></div>")


def _contents(sessions: list[SessionRecords]) -> str:
    if len(sessions) < 2:
        return ""
    entries = "".join(
        f"<li><a href='#s{number}'>{escape(info.session_id)}</a> "
        f"<span class=meta>{escape(info.mode)} · {info.message_count} messages · "
        f"{_time(info.last_active) if info.last_active else '-'}</span></li>"
        for number, (info, _) in enumerate(sessions, start=1)
    )
    return f"<nav class=toc><h2>Sessions ({len(sessions)})</h2><ol>{entries}</ol></nav>"


def hashed_sessions(log: AuditStore, session_ids: Iterable[str]) -> Iterator[SessionRecords]:
    """Each session's info and its records with their stored hashes (found through its
    stream index), for `render_html`."""
    for session_id in session_ids:
        records = [(decode_record(value[HASH_SIZE:]), bytes(value[:HASH_SIZE]))
                   for _, value in log.read_session_raw(session_id)]
        yield log.require_info(session_id), records


def render_html(
    sessions: Iterable[SessionRecords],
    *,
    title: str,
    head: str,
    check: LedgerCheck | None = None,
) -> str:
    """The whole transcript page: the verification stamp, a table of contents for several
    sessions, then each session (info and hashed records)."""
    listed = list(sessions)
    sections = "".join(
        _session_section(number, info, records)
        for number, (info, records) in enumerate(listed, start=1)
    )
    generated = _time(datetime.now(timezone.utc))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<header class=page><h1>{escape(title)}</h1>"
        f"<p>exported {generated} · ledger head {escape(head)}</p></header>"
        f"<main>{_stamp(check, head)}{_contents(listed)}{sections}</main></body></html>\n"
    )
