"""Pure folds over recorded events: session info, conversation history, time travel.

`evolve(state, recorded) -> state` is the one place state changes; it insists that each
record's version is the next one. Nothing here does I/O or mutates its input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import msgspec

from .model import (
    AgentSessionLost,
    BudgetSet,
    CanvasModified,
    ForkedFrom,
    MessageSent,
    ModeSwitched,
    Recorded,
    ResponseReceived,
    RunFailed,
    RunStarted,
    SessionArchived,
    SessionCreated,
    SessionExpired,
    SessionResumed,
    SessionTagged,
    SessionTitled,
    SessionUnarchived,
    StudyContextSet,
    ToolCall,
    TranscriptDeleted,
    TranscriptEntriesAppended,
    TurnRefused,
)

STATUS_NEW = "new"
STATUS_IDLE = "idle"
STATUS_RUNNING = "running"
STATUS_EXPIRED = "expired"
STATUSES = (STATUS_NEW, STATUS_IDLE, STATUS_RUNNING, STATUS_EXPIRED)
"""Every status a session can have, in the order of its life."""


class ProjectionError(ValueError):
    """Records were folded out of order (a gap or a repeat in a session's versions)."""


class ForkLineage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A fork's parent and version, and the parent's agent session its first turn forks
    (until the fork has an agent session of its own, or the parent's was lost)."""

    parent_session_id: str
    parent_version: int
    agent_session_id: str | None = None


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a session is now: mode, study, activity, counts, status, last error, cost; its
    owner, title, tags and archive flag; its tokens and spend caps.

    Stored in the session index as a map, so fields added later decode from older entries
    with their defaults (and `rebuild` recomputes them from the log).
    """

    session_id: str
    version: int = 0
    last_position: int = 0
    mode: str = "user"
    study_id: str | None = None
    created_at: datetime | None = None
    last_active: datetime | None = None
    message_count: int = 0
    turn_count: int = 0
    status: str = STATUS_NEW
    last_error: str | None = None
    total_cost_usd: float = 0.0
    agent_session_id: str | None = None
    open_turn: int | None = None
    failure_count: int = 0
    owner: str | None = None
    title: str | None = None
    tags: tuple[str, ...] = ()
    archived: bool = False
    total_tokens: int = 0
    budget_usd: float | None = None
    budget_tokens: int | None = None
    refused_count: int = 0
    fork: ForkLineage | None = None
    """Where a fork came from (None: not a fork); one compact field, so the index entries
    of the sessions that are not forks grow by a few bytes only."""

    @property
    def forked_from(self) -> str | None:
        """The session this one was forked from (None: not a fork)."""
        return self.fork.parent_session_id if self.fork is not None else None

    @property
    def forked_at_version(self) -> int:
        """The parent's version the fork was made at (0: not a fork)."""
        return self.fork.parent_version if self.fork is not None else 0

    @property
    def fork_agent_session_id(self) -> str | None:
        """The parent's agent session a fork's first turn resumes with `--fork-session`."""
        return self.fork.agent_session_id if self.fork is not None else None


TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
"""The `usage` counts that make up a turn's tokens (cache writes and reads included)."""


def usage_tokens(usage: dict[str, Any] | None) -> int:
    """A turn's tokens from its `usage`: input, output and both kinds of cache tokens."""
    if not usage:
        return 0
    total = 0
    for name in TOKEN_FIELDS:
        value = usage.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            total += value
    return total


def evolve(info: SessionInfo, recorded: Recorded) -> SessionInfo:
    """Fold one record into a session's info; the record must be the next version."""
    if recorded.version != info.version + 1:
        raise ProjectionError(
            f"session {info.session_id!r}: expected version {info.version + 1}, "
            f"got {recorded.version}"
        )
    change = _CHANGES.get(type(recorded.event))
    if change is None:  # CanvasModified and events from newer releases change nothing here
        return _replace(info, version=recorded.version, last_position=recorded.position,
                        last_active=recorded.recorded_at)
    return change(info, recorded, recorded.event)


# One function per event type that changes more than the version and activity. Each builds
# the new info in one `replace` call with explicit keywords: a replay or a rehydration folds
# every record through here, and this is several times cheaper than a dict of changes.
_replace = msgspec.structs.replace


def _created(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at, mode=event.mode, study_id=event.study_id,
                    created_at=recorded.recorded_at, status=STATUS_IDLE,
                    owner=event.owner)


def _resumed(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    if info.status == STATUS_NEW:
        return _replace(info, version=recorded.version, last_position=recorded.position,
                        last_active=recorded.recorded_at, created_at=recorded.recorded_at,
                        status=STATUS_IDLE)
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at,
                    status=STATUS_IDLE if info.status == STATUS_EXPIRED else info.status)


def _study_set(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at, study_id=event.study_id)


def _mode_switched(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at, mode=event.to_mode)


def _message_sent(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at, message_count=info.message_count + 1,
                    turn_count=max(info.turn_count, event.turn))


def _run_started(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at, status=STATUS_RUNNING,
                    open_turn=event.turn)


def _response_received(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at, status=STATUS_IDLE, open_turn=None,
                    message_count=info.message_count + 1,
                    total_cost_usd=info.total_cost_usd + (event.cost_usd or 0.0),
                    total_tokens=info.total_tokens + usage_tokens(event.usage),
                    agent_session_id=event.agent_session_id or info.agent_session_id,
                    last_error=None)


def _run_failed(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at, status=STATUS_IDLE, open_turn=None,
                    last_error=f"{event.reason}: {event.message}" if event.message
                    else event.reason,
                    failure_count=info.failure_count + 1,
                    total_cost_usd=info.total_cost_usd + (event.cost_usd or 0.0),
                    total_tokens=info.total_tokens + usage_tokens(event.usage))


def _agent_session_lost(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at, agent_session_id=None,
                    fork=None if info.fork is None else _replace(info.fork,
                                                                 agent_session_id=None))


def _forked(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at,
                    fork=ForkLineage(parent_session_id=event.parent_session_id,
                                     parent_version=event.parent_version,
                                     agent_session_id=event.agent_session_id))


def _expired(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at, status=STATUS_EXPIRED, open_turn=None)


def _transcript_appended(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    if event.turn:  # claude's transcript of a chatledger turn: the turn's events already count
        return _replace(info, version=recorded.version, last_position=recorded.position,
                        last_active=recorded.recorded_at)
    messages = sum(1 for entry in event.entries if _entry_role(entry) is not None)
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at,
                    created_at=info.created_at or recorded.recorded_at,
                    status=STATUS_IDLE if info.status in (STATUS_NEW, STATUS_EXPIRED)
                    else info.status,
                    message_count=info.message_count + messages,
                    agent_session_id=event.agent_session_id)


def _titled(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at, title=event.title or None)


def _tagged(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    removed = set(event.removed)
    tags = [tag for tag in info.tags if tag not in removed]
    tags.extend(tag for tag in dict.fromkeys(event.added) if tag not in tags)
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at, tags=tuple(tags))


def _archived(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at, archived=True)


def _unarchived(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at, archived=False)


def _budget_set(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at, budget_usd=event.usd,
                    budget_tokens=event.tokens)


def _turn_refused(info: SessionInfo, recorded: Recorded, event: Any) -> SessionInfo:
    return _replace(info, version=recorded.version, last_position=recorded.position,
                    last_active=recorded.recorded_at, refused_count=info.refused_count + 1)


_CHANGES: dict[type, Callable[[SessionInfo, Recorded, Any], SessionInfo]] = {
    SessionCreated: _created,
    SessionResumed: _resumed,
    StudyContextSet: _study_set,
    ModeSwitched: _mode_switched,
    MessageSent: _message_sent,
    RunStarted: _run_started,
    ResponseReceived: _response_received,
    RunFailed: _run_failed,
    AgentSessionLost: _agent_session_lost,
    SessionExpired: _expired,
    TranscriptEntriesAppended: _transcript_appended,
    SessionTitled: _titled,
    SessionTagged: _tagged,
    SessionArchived: _archived,
    SessionUnarchived: _unarchived,
    BudgetSet: _budget_set,
    TurnRefused: _turn_refused,
    ForkedFrom: _forked,
}


def session_info(session_id: str, records: Iterable[Recorded]) -> SessionInfo:
    """Fold a session's records (from version 1) into its info."""
    info = SessionInfo(session_id=session_id)
    for recorded in records:
        info = evolve(info, recorded)
    return info


class HistoryMessage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One message of a conversation as a reader sees it."""

    role: str  # "user" | "assistant" | "error"
    content: str
    timestamp: datetime
    turn: int
    tool_calls: tuple[ToolCall, ...] = ()
    canvas_state: Any = None
    canvas_modifications: tuple[Any, ...] = ()
    mode: str = "user"


def history(records: Iterable[Recorded], mode: str = "user") -> list[HistoryMessage]:
    """The conversation as messages: user messages, answers (with tool calls), failures.

    `mode` is the session's mode before the first record (for a tail of a stream).
    """
    messages: list[HistoryMessage] = []
    pending_modifications: dict[int, list[Any]] = {}
    transcript_start: int | None = None  # where this session's transcript messages begin
    joined: dict[int, str] = {}  # message index -> API message id (transcript answers)
    for recorded in records:
        event = recorded.event
        if isinstance(event, TranscriptEntriesAppended):
            # (A chatledger turn's mirrored transcript lives in a session of its own, so
            # it never doubles that turn's MessageSent/ResponseReceived in one history.)
            if transcript_start is None:
                transcript_start = len(messages)
            _append_transcript_messages(messages, event.entries, recorded, mode, joined,
                                        event.turn)
        elif isinstance(event, TranscriptDeleted):
            if transcript_start is not None:
                del messages[transcript_start:]  # SDK sessions hold nothing else
                transcript_start = None
                joined.clear()
        elif isinstance(event, SessionCreated):
            mode = event.mode
        elif isinstance(event, ModeSwitched):
            mode = event.to_mode
        elif isinstance(event, MessageSent):
            messages.append(
                HistoryMessage(
                    role="user",
                    content=event.text,
                    timestamp=recorded.recorded_at,
                    turn=event.turn,
                    canvas_state=event.canvas_state,
                    mode=mode,
                )
            )
        elif isinstance(event, CanvasModified):
            pending_modifications.setdefault(event.turn, []).append(event.modification)
        elif isinstance(event, ResponseReceived):
            messages.append(
                HistoryMessage(
                    role="assistant",
                    content=event.text,
                    timestamp=recorded.recorded_at,
                    turn=event.turn,
                    tool_calls=event.tool_calls,
                    canvas_modifications=tuple(pending_modifications.pop(event.turn, ())),
                    mode=mode,
                )
            )
        elif isinstance(event, RunFailed):
            pending_modifications.pop(event.turn, None)
            messages.append(
                HistoryMessage(
                    role="error",
                    content=f"{event.reason}: {event.message}" if event.message else event.reason,
                    timestamp=recorded.recorded_at,
                    turn=event.turn,
                    mode=mode,
                )
            )
    return messages


def _entry_role(entry: Any) -> str | None:
    """"user" or "assistant" for a transcript entry that is a message, else None."""
    if isinstance(entry, dict) and entry.get("type") in ("user", "assistant") \
            and isinstance(entry.get("message"), dict):
        return str(entry["type"])
    return None


def _append_transcript_messages(
    messages: list[HistoryMessage], entries: Iterable[Any], recorded: Recorded, mode: str,
    joined: dict[int, str], turn: int = 0,
) -> None:
    """Add the user and assistant messages among transcript entries to `messages`: text
    blocks as content, tool_use blocks as tool calls, a user entry of tool results as a
    "tool" message. claude writes one assistant entry per content block: those of one API
    message (same message id, remembered in `joined` by index) are joined."""
    for entry in entries:
        role = _entry_role(entry)
        if role is None:
            continue
        message = entry["message"]
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else [
            block for block in content if isinstance(block, dict)
        ] if isinstance(content, list) else []
        texts = [block["text"] for block in blocks
                 if block.get("type") == "text" and isinstance(block.get("text"), str)]
        calls = tuple(
            ToolCall(name=str(block.get("name", "")), input=block.get("input"),
                     tool_use_id=str(block.get("id", "")))
            for block in blocks if block.get("type") == "tool_use"
        )
        results = [block for block in blocks if block.get("type") == "tool_result"]
        if role == "user" and results and not texts:
            role = "tool"
            texts = [_tool_result_text(block) for block in results]
        if not texts and not calls:
            continue
        message_id = message.get("id") if role == "assistant" else None
        last = len(messages) - 1
        if isinstance(message_id, str) and joined.get(last) == message_id:
            previous = messages[last]
            messages[last] = _replace(
                previous, content="\n".join(part for part in (previous.content, *texts) if part),
                tool_calls=previous.tool_calls + calls,
            )
            continue
        messages.append(HistoryMessage(
            role=role, content="\n".join(texts), timestamp=_entry_time(entry)
            or recorded.recorded_at, turn=turn, tool_calls=calls, mode=mode,
        ))
        if isinstance(message_id, str):
            joined[len(messages) - 1] = message_id


def _tool_result_text(block: dict[str, Any]) -> str:
    inner = block.get("content")
    if isinstance(inner, str):
        return inner
    if isinstance(inner, list):
        return "\n".join(part["text"] for part in inner
                         if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _entry_time(entry: dict[str, Any]) -> datetime | None:
    stamp = entry.get("timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def conversation(records: Iterable[Recorded], mode: str = "user") -> list[HistoryMessage]:
    """Only the user and assistant messages (what a prompt's history window draws from)."""
    return [message for message in history(records, mode) if message.role != "error"]


def transcript_entries(
    records: Iterable[Recorded], project_key: str, agent_session_id: str,
    subpath: str | None = None,
) -> list[Any] | None:
    """The agent transcript under one key, entries in order since its last deletion; None if
    nothing was kept under that key (or all of it was deleted). Records of other keys and
    other events are ignored."""
    entries: list[Any] | None = None
    for recorded in records:
        event = recorded.event
        if isinstance(event, (TranscriptEntriesAppended, TranscriptDeleted)) and (
            event.agent_session_id == agent_session_id and event.project_key == project_key
            and event.subpath == subpath
        ):
            if isinstance(event, TranscriptDeleted):
                entries = None
            elif event.entries:
                if entries is None:
                    entries = []
                entries.extend(event.entries)
    return entries


def at_version(records: Iterable[Recorded], version: int) -> list[Recorded]:
    """The records of a session up to and including `version` (time travel)."""
    if version < 0:
        raise ValueError("version must be >= 0")
    return [recorded for recorded in records if recorded.version <= version]
