"""Claude Code's stream-json output, turned into typed agent updates and one final result.

`StreamJsonParser` is fed one stdout line at a time (as bytes, without a length limit) and
answers with the events that line completes: text deltas, tool calls (each tool_use joined
with its tool_result by id), the session's init, API retries and the final result.
`finish()` folds everything into a `ParsedResult`. Success is decided by the result line's
`is_error`, never by its `subtype` (API failures say "success" with `is_error: true`).

The parser must never raise on what the agent prints: malformed JSON, JSON that is not an
object, unknown line types and invalid UTF-8 are counted and kept as short diagnostics. It
does no I/O and knows nothing about processes.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from ..events import ToolCall
from .model_usage import parse_model_usage
from .run_types import (
    AgentInit,
    AgentResult,
    AgentUpdate,
    ApiRetried,
    ParsedResult,
    TextDelta,
    TextReset,
    ToolCallCompleted,
    TranscriptFrame,
)

MAX_DIAGNOSTICS = 20
"""How many diagnostics a parser keeps (the counts go on past it)."""

DIAGNOSTIC_EXCERPT_CHARS = 120
"""How much of an offending line a diagnostic quotes."""

KNOWN_LINE_TYPES = frozenset({"system", "assistant", "user", "stream_event", "result",
                              "transcript_mirror"})
"""Line types the parser understands; any other type is counted as unknown."""

STREAM_EVENT_PREFIX = b'{"type":"stream_event"'
"""How claude starts every stream_event line (its JSON puts `type` first)."""


class _StartedMessage(msgspec.Struct):
    id: Any = None


class _Delta(msgspec.Struct):
    type: Any = None
    text: Any = None


class _StreamEvent(msgspec.Struct):
    type: Any = None
    message: _StartedMessage | None = None
    delta: _Delta | None = None


class _StreamEventLine(msgspec.Struct):
    """The fields of a stream_event line the parser reads; the rest is skipped unread."""

    event: _StreamEvent
    parent_tool_use_id: Any = None


_stream_event_decoder = msgspec.json.Decoder(_StreamEventLine)


class _PendingToolUse(msgspec.Struct, kw_only=True):
    """A tool_use seen in an assistant line, waiting for its tool_result."""

    order: int
    tool_use_id: str
    name: str
    input: Any
    call: ToolCall | None = None


def decode_tool_output(content: Any) -> Any:
    """A tool_result's content as a value: text blocks unwrapped, JSON objects/arrays decoded.

    A string, or the text of a single text block, becomes the decoded JSON when it is a JSON
    object or array, else stays text. Several blocks become a list of such values (a block
    that is not text is kept as it is).
    """
    if isinstance(content, str):
        return _decode_json_text(content)
    if isinstance(content, list):
        values = [
            _decode_json_text(block["text"]) if _is_text_block(block) else block
            for block in content
        ]
        return values[0] if len(values) == 1 else values
    return content


def _is_text_block(block: Any) -> bool:
    return (
        isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
    )


def _decode_json_text(text: str) -> Any:
    """JSON text that is an object or an array, decoded; any other text as it is."""
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[":
        return text
    try:
        return msgspec.json.decode(stripped)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return text


def _optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _optional_float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


REPAIRED = "invalid UTF-8 at byte"
"""How _decode_line's note on a line read with U+FFFD for its bad bytes starts."""


def _decode_line(line: bytes) -> tuple[Any, str | None]:
    """(the JSON value, None), or (None, why the line is not JSON); a line whose bad bytes
    were read as U+FFFD comes with a note that starts with REPAIRED.

    msgspec reads nearly every line; the standard library takes what it refuses but a
    JavaScript program may print: escapes of lone surrogates (node's JSON.stringify writes
    them) and NaN/Infinity. The codec makes such values storable later.
    """
    try:
        return msgspec.json.decode(line), None
    except (msgspec.DecodeError, ValueError, RecursionError) as error:
        refused = error
    repaired = None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as bad_bytes:
        # Agent output is always recorded: bad bytes become U+FFFD, as in its text.
        text = line.decode("utf-8", errors="replace")
        repaired = f"{REPAIRED} {bad_bytes.start}, read as U+FFFD"
    try:
        return json.loads(text), repaired
    except (ValueError, RecursionError):
        return None, f"not JSON ({refused}){', ' + repaired if repaired else ''}"


class StreamJsonParser:
    """Turns stream-json lines into agent events as they arrive, and a result at the end.

    Not thread-safe: one parser per run, fed from one thread.
    """

    def __init__(self) -> None:
        self._line_number = 0
        self._garbage_lines = 0
        self._unknown_lines = 0
        self._diagnostics: list[str] = []
        self._text_blocks: list[str] = []
        self._tool_uses: dict[str, _PendingToolUse] = {}
        self._tool_order: list[_PendingToolUse] = []
        self._streamed_message_ids: set[str] = set()
        # Text streamed in the current message that no assistant line has confirmed yet: an
        # interrupted claude prints it again as a new message, which must not stream twice.
        self._unconfirmed_text = ""
        self._unanswered_stream_ids: set[str] = set()  # streamed, no assistant line yet
        self._streaming_message_id: str | None = None
        self._saw_anonymous_stream = False
        self._init: AgentInit | None = None
        self._result: AgentResult | None = None
        self._finished: ParsedResult | None = None

    # -- feeding ----------------------------------------------------------------------------

    def feed_line(self, line: bytes) -> list[AgentUpdate]:
        """The events one stdout line completes; never raises on what the agent printed."""
        self._line_number += 1
        stripped = line.strip()
        if not stripped:
            return []
        if stripped.startswith(STREAM_EVENT_PREFIX):
            # Most lines of a streamed answer: read only what is needed, into structs (a
            # third of the cost of a dict); any other shape takes the general path.
            try:
                line_fields = _stream_event_decoder.decode(stripped)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                pass
            else:
                event = line_fields.event
                return self._stream_event(
                    line_fields.parent_tool_use_id, event.type,
                    event.message.id if event.message is not None else None,
                    event.delta.type if event.delta is not None else None,
                    event.delta.text if event.delta is not None else None,
                )
        message, problem = _decode_line(stripped)
        if problem is not None and problem.startswith(REPAIRED):
            self._note(f"line {self._line_number}: {problem}")
            problem = None
        if problem is not None:
            self._garbage(problem, stripped)
            return []
        if not isinstance(message, dict):
            self._garbage(f"JSON {type(message).__name__}, not an object", stripped)
            return []
        kind = message.get("type")
        if not isinstance(kind, str) or kind not in KNOWN_LINE_TYPES:
            self._unknown_lines += 1
            self._note(f"line {self._line_number}: unknown type {str(kind)[:40]!r}")
            return []
        try:
            return self._dispatch(kind, message)
        except Exception as error:  # a shape we did not foresee must not break the run
            self._garbage(f"unexpected {kind} line shape ({type(error).__name__}: {error})",
                          stripped)
            return []

    def _dispatch(self, kind: str, message: dict[str, Any]) -> list[AgentUpdate]:
        if kind == "system":
            return self._on_system(message)
        if kind == "assistant":
            return self._on_assistant(message)
        if kind == "user":
            return self._on_user(message)
        if kind == "stream_event":
            return self._on_stream_event(message)
        if kind == "transcript_mirror":
            return self._on_transcript_mirror(message)
        return self._on_result(message)

    def _on_transcript_mirror(self, message: dict[str, Any]) -> list[AgentUpdate]:
        """`--session-mirror`'s frame: transcript entries, for the ledger only (no text)."""
        file_path, entries = message.get("filePath"), message.get("entries")
        if not isinstance(file_path, str) or not file_path or not isinstance(entries, list):
            self._note(f"line {self._line_number}: transcript_mirror line without filePath "
                       "and entries")
            return []
        return [TranscriptFrame(file_path=file_path, entries=tuple(entries))]

    def _on_system(self, message: dict[str, Any]) -> list[AgentUpdate]:
        subtype = message.get("subtype")
        if subtype == "init":
            tools = message.get("tools")
            servers = message.get("mcp_servers")
            self._init = AgentInit(
                session_id=_optional_str(message.get("session_id")),
                model=_optional_str(message.get("model")),
                tools=tuple(t for t in tools if isinstance(t, str)) if isinstance(tools, list) else (),
                mcp_servers=(
                    tuple(s for s in servers if isinstance(s, dict))
                    if isinstance(servers, list) else ()
                ),
                permission_mode=_optional_str(message.get("permissionMode")),
                cwd=_optional_str(message.get("cwd")),
                version=_optional_str(message.get("claude_code_version")),
            )
            return [self._init]
        if subtype == "api_retry":
            error = message.get("error")
            return [
                ApiRetried(
                    attempt=_optional_int(message.get("attempt")),
                    max_retries=_optional_int(message.get("max_retries")),
                    retry_delay_ms=_optional_float(message.get("retry_delay_ms")),
                    error_status=_optional_int(message.get("error_status")),
                    error=error if isinstance(error, str) else (
                        None if error is None else json.dumps(error, default=str)[:500]
                    ),
                )
            ]
        return []  # other system lines (hooks, compaction, status) carry nothing we record

    def _on_assistant(self, message: dict[str, Any]) -> list[AgentUpdate]:
        body = message.get("message")
        if not isinstance(body, dict):
            self._note(f"line {self._line_number}: assistant line without a message object")
            return []
        content = body.get("content")
        if not isinstance(content, list):
            return []
        message_id = body.get("id")
        from_subagent = message.get("parent_tool_use_id") is not None
        already_streamed = (
            message_id in self._streamed_message_ids
            if isinstance(message_id, str)
            else self._saw_anonymous_stream or bool(self._streamed_message_ids)
        )
        # A streamed message that never got its assistant line, then one that was not
        # streamed: the stream broke and the agent retried without streaming.
        retried = not already_streamed and bool(self._unanswered_stream_ids)
        if isinstance(message_id, str):
            self._unanswered_stream_ids.discard(message_id)
        events: list[AgentUpdate] = []
        for block in content:
            if not isinstance(block, dict):
                continue
            block_type = block.get("type")
            if block_type == "text" and isinstance(block.get("text"), str):
                if from_subagent:
                    continue  # a sub-agent's own chatter is not the answer
                self._text_blocks.append(block["text"])
                # An interrupted claude prints what it streamed again: neither a reset nor new.
                repeated = bool(self._unconfirmed_text) and block["text"] == self._unconfirmed_text
                if retried and not repeated:
                    self._unanswered_stream_ids.clear()
                    events.append(TextReset(text=block["text"]))
                    retried = False
                elif not already_streamed and not repeated and block["text"]:
                    events.append(TextDelta(text=block["text"]))
                self._unconfirmed_text = ""
            elif block_type in ("tool_use", "server_tool_use", "mcp_tool_use"):
                self._on_tool_use(block)
        return events

    def _on_tool_use(self, block: dict[str, Any]) -> None:
        tool_use_id = block.get("id")
        if not isinstance(tool_use_id, str):
            tool_use_id = f"anonymous-{len(self._tool_order) + 1}"
        if tool_use_id in self._tool_uses:
            return  # the same block repeated (a re-sent message): keep the first
        pending = _PendingToolUse(
            order=len(self._tool_order),
            tool_use_id=tool_use_id,
            name=_optional_str(block.get("name")) or "",
            input=block.get("input"),
        )
        self._tool_uses[tool_use_id] = pending
        self._tool_order.append(pending)

    def _on_user(self, message: dict[str, Any]) -> list[AgentUpdate]:
        body = message.get("message")
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, list):
            return []
        events: list[AgentUpdate] = []
        for block in content:
            if not isinstance(block, dict) or block.get("type") not in (
                "tool_result", "mcp_tool_result", "web_search_tool_result"
            ):
                continue
            tool_use_id = block.get("tool_use_id")
            pending = self._tool_uses.get(tool_use_id) if isinstance(tool_use_id, str) else None
            if pending is None:
                self._note(f"line {self._line_number}: tool_result for unknown tool_use "
                           f"{str(tool_use_id)[:60]!r}")
                continue
            if pending.call is not None:
                continue  # a second result for one call: the first one stands
            pending.call = ToolCall(
                name=pending.name,
                input=pending.input,
                output=decode_tool_output(block.get("content")),
                is_error=block.get("is_error") is True,
                tool_use_id=pending.tool_use_id,
            )
            events.append(ToolCallCompleted(tool_call=pending.call))
        return events

    def _on_stream_event(self, message: dict[str, Any]) -> list[AgentUpdate]:
        event = message.get("event")
        if not isinstance(event, dict):
            return []
        started = event.get("message")
        delta = event.get("delta")
        return self._stream_event(
            message.get("parent_tool_use_id"), event.get("type"),
            started.get("id") if isinstance(started, dict) else None,
            delta.get("type") if isinstance(delta, dict) else None,
            delta.get("text") if isinstance(delta, dict) else None,
        )

    def _stream_event(
        self, parent_tool_use_id: Any, event_type: Any, started_id: Any, delta_type: Any,
        text: Any,
    ) -> list[AgentUpdate]:
        """A stream_event line, from the fields the parser reads (a text delta, or none)."""
        if parent_tool_use_id is not None:
            return []
        if event_type == "message_start":
            self._streaming_message_id = started_id if isinstance(started_id, str) else None
            self._unconfirmed_text = ""
            return []
        if event_type != "content_block_delta" or delta_type != "text_delta":
            return []
        if not isinstance(text, str) or not text:
            return []
        if self._streaming_message_id is not None:
            self._streamed_message_ids.add(self._streaming_message_id)
            self._unanswered_stream_ids.add(self._streaming_message_id)
        else:
            self._saw_anonymous_stream = True
        self._unconfirmed_text += text
        return [TextDelta(text=text)]

    def _on_result(self, message: dict[str, Any]) -> list[AgentUpdate]:
        raw_errors = message.get("errors")
        errors: tuple[str, ...] = ()
        if isinstance(raw_errors, list):
            errors = tuple(e if isinstance(e, str) else json.dumps(e, default=str)
                           for e in raw_errors)
        elif isinstance(raw_errors, str):
            errors = (raw_errors,)
        usage = message.get("usage")
        denials = message.get("permission_denials")
        self._result = AgentResult(
            text=_optional_str(message.get("result")) or "",
            is_error=message.get("is_error") is True,
            subtype=_optional_str(message.get("subtype")),
            errors=errors,
            api_error_status=_optional_int(message.get("api_error_status")),
            cost_usd=_optional_float(message.get("total_cost_usd")),
            usage=usage if isinstance(usage, dict) else None,
            session_id=_optional_str(message.get("session_id")),
            num_turns=_optional_int(message.get("num_turns")),
            duration_ms=_optional_float(message.get("duration_ms")),
            permission_denials=tuple(denial for denial in denials if isinstance(denial, dict))
            if isinstance(denials, list) else (),
            model_usage=parse_model_usage(message.get("modelUsage")),
        )
        return [self._result]

    # -- bookkeeping ------------------------------------------------------------------------

    def _garbage(self, problem: str, line: bytes) -> None:
        self._garbage_lines += 1
        excerpt = line[:DIAGNOSTIC_EXCERPT_CHARS].decode("utf-8", errors="replace")
        self._note(f"line {self._line_number}: {problem}: {excerpt!r}")

    def _note(self, diagnostic: str) -> None:
        if len(self._diagnostics) < MAX_DIAGNOSTICS:
            self._diagnostics.append(diagnostic)

    @property
    def saw_result(self) -> bool:
        """Whether a `result` line has arrived."""
        return self._result is not None

    @property
    def init(self) -> AgentInit | None:
        """The `system/init` line, once seen."""
        return self._init

    # -- the end ----------------------------------------------------------------------------

    def unfinished_tool_calls(self) -> list[ToolCallCompleted]:
        """Tool uses that never got a result, reported with output None (call once, at the end)."""
        events: list[ToolCallCompleted] = []
        for pending in self._tool_order:
            if pending.call is None:
                pending.call = ToolCall(name=pending.name, input=pending.input, output=None,
                                        tool_use_id=pending.tool_use_id)
                events.append(ToolCallCompleted(tool_call=pending.call))
        return events

    def finish(self) -> ParsedResult:
        """Everything the run said, folded into one result (tool uses without results get None)."""
        if self._finished is not None:
            return self._finished
        self.unfinished_tool_calls()
        result = self._result
        answer = "\n\n".join(block for block in self._text_blocks if block)
        self._finished = ParsedResult(
            text=result.text if result is not None and result.text else answer,
            tool_calls=tuple(p.call for p in self._tool_order if p.call is not None),
            is_error=result.is_error if result is not None else False,
            errors=result.errors if result is not None else (),
            api_error_status=result.api_error_status if result is not None else None,
            cost_usd=result.cost_usd if result is not None else None,
            usage=result.usage if result is not None else None,
            agent_session_id=(
                (result.session_id if result is not None else None)
                or (self._init.session_id if self._init is not None else None)
            ),
            num_turns=result.num_turns if result is not None else None,
            duration_ms=result.duration_ms if result is not None else None,
            subtype=result.subtype if result is not None else None,
            model=self._init.model if self._init is not None else None,
            saw_result=result is not None,
            garbage_lines=self._garbage_lines,
            unknown_lines=self._unknown_lines,
            diagnostics=tuple(self._diagnostics),
            text_blocks=tuple(self._text_blocks),
            permission_denials=result.permission_denials if result is not None else (),
            model_usage=result.model_usage if result is not None else (),
        )
        return self._finished
