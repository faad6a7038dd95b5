"""What the stand-in agent prints for one turn: claude's lines (`Agent`) and the scripted
behaviours (`HANDLERS`). `standin` reads the flags and chooses the behaviour; this module
writes to stdout and sleeps, and starts a child only for the `spawn` behaviour.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .standin import Options
    from .standin_mirror import TranscriptMirror

CANVAS_TOOL = "mcp__atomizer-tools__apply_canvas_change"
READ_ONLY_TOOLS = ("Read", "Glob", "Grep", "LS")
"""Tools claude allows in --print mode without an allow-list entry."""

STANDIN_MODEL = "claude-standin"
STANDIN_VERSION = "0.0.0-standin"
SLEEP_STEP = 0.02
WRITE_LOCK = threading.Lock()
"""Held while a line is written: in live mode control answers come from another thread."""

PermissionAsker = Callable[[str, dict[str, Any], str], "dict[str, Any] | None"]
"""Asks the caller about a tool call (name, input, tool_use_id): claude's control response
(`{"behavior": "allow"|"deny", ...}`), or None if the turn was interrupted meanwhile."""

class Interrupted(Exception):
    """SIGINT arrived; raised at the next safe point (never in the middle of a line)."""


class UsageError(Exception):
    """A bad flag or behaviour argument (exit 2, like claude's usage errors)."""

def number_argument(behaviour: str, argument: str | None, default: float) -> float:
    """A behaviour's numeric argument (seconds or megabytes)."""
    if argument is None:
        return default
    try:
        value = float(argument)
    except ValueError:
        raise UsageError(f"error: behaviour {behaviour!r} expects a number, not {argument!r}") from None
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"error: behaviour {behaviour!r} expects a finite number >= 0")
    return value

def mcp_server_names(path: str | None) -> list[str]:
    """The server names of an MCP config file (none if it cannot be read)."""
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as handle:
            servers = json.load(handle).get("mcpServers", {})
        return [name for name in servers if isinstance(name, str)]
    except (OSError, ValueError, AttributeError):
        return []


CACHE_WRITE_TOKENS = 4
CACHE_READ_TOKENS = 8
"""Cache tokens every stand-in answer reports in its usage (claude reports both kinds)."""


class Agent:
    """One turn of the stand-in: writes claude's lines and keeps what it answered."""

    def __init__(self, options: Options, prompt: str, session_id: str) -> None:
        self.options = options
        self.prompt = prompt
        self.session_id = session_id
        self.stream = options.output_format == "stream-json"
        self.started = time.monotonic()
        self.interrupted = False
        self.last_text = ""
        self.partial_text = ""
        self.turns = 1
        self.denials: list[dict[str, Any]] = []
        self.output_tokens = 0
        self.mirror: TranscriptMirror | None = None  # with --session-mirror
        self.cost_before = 0.0  # live mode: the process's cost before this turn
        self.result_cost: float | None = None
        self.model_usage_before: dict[str, float] = {}  # live mode: the process's modelUsage
        self.result_model_usage: dict[str, float] | None = None
        self.ask_permission: PermissionAsker | None = None
        self.text_blocks: list[str] = []

    # -- signals ----------------------------------------------------------------------------

    def on_interrupt(self, signal_number: int, frame: FrameType | None) -> None:
        """SIGINT: remember it; the next sleep step raises Interrupted."""
        self.interrupted = True

    def sleep(self, seconds: float) -> None:
        """Sleep in small steps, raising Interrupted as soon as SIGINT has arrived."""
        end = time.monotonic() + seconds
        while True:
            if self.interrupted:
                raise Interrupted
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(SLEEP_STEP, remaining))

    # -- lines ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write raw bytes to stdout and flush."""
        with WRITE_LOCK:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    def line(self, message: dict[str, Any]) -> None:
        """One stream-json line (raw UTF-8, like claude)."""
        if self.stream:
            encoded = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
            self.write(encoded.encode("utf-8", errors="surrogatepass") + b"\n")

    def init(self) -> None:
        """The system/init line."""
        servers = mcp_server_names(self.options.mcp_config)
        self.line({
            "type": "system", "subtype": "init", "cwd": os.getcwd(),
            "session_id": self.session_id,
            "tools": ["Task", "Bash", "Glob", "Grep", "LS", "Read", "Edit", "Write",
                      "WebFetch", "TodoWrite", CANVAS_TOOL],
            "mcp_servers": [{"name": name, "status": "connected"} for name in servers],
            "model": self.options.model,
            "permissionMode": "bypassPermissions" if self.options.skip_permissions else "default",
            "slash_commands": [], "apiKeySource": "none", "claude_code_version": STANDIN_VERSION,
            "output_style": "default", "agents": [], "skills": [], "plugins": [],
            "uuid": str(uuid.uuid4()),
        })

    def envelope(self, kind: str, message: dict[str, Any]) -> dict[str, Any]:
        """An assistant/user line around `message`, with this session's id."""
        return {"type": kind, "message": message, "parent_tool_use_id": None,
                "session_id": self.session_id, "uuid": str(uuid.uuid4())}

    def _assistant(self, message_id: str, block: dict[str, Any]) -> None:
        self.line(self.envelope("assistant", {
            "id": message_id, "type": "message", "role": "assistant", "model": self.options.model,
            "content": [block], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 1},
        }))

    def _stream_event(self, event: dict[str, Any]) -> None:
        if self.options.partial_messages:
            self.line({"type": "stream_event", "event": event, "session_id": self.session_id,
                       "parent_tool_use_id": None, "uuid": str(uuid.uuid4())})

    def say(self, text: str, *, over_seconds: float = 0.0) -> None:
        """One text block: deltas (if asked; the first at once, the rest spread over
        `over_seconds`), then the assistant line."""
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        self._stream_event({"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant",
            "model": self.options.model, "content": [], "stop_reason": None}})
        self._stream_event({"type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}})
        pieces = re.findall(r"\S+\s*|\s+", text) or [text]
        if len(pieces) > 40:  # keep the line count sane for long answers
            size = -(-len(text) // 40)
            pieces = [text[i : i + size] for i in range(0, len(text), size)]
        self.partial_text = ""
        for index, piece in enumerate(pieces):
            if index:  # the first piece comes at once, the others spread over the time
                self.sleep(over_seconds / len(pieces))
            self.partial_text += piece
            self._stream_event({"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": piece}})
        self.sleep(over_seconds / len(pieces))
        self._stream_event({"type": "content_block_stop", "index": 0})
        self._stream_event({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                            "usage": {"output_tokens": max(1, len(text) // 4)}})
        self._stream_event({"type": "message_stop"})
        self._assistant(message_id, {"type": "text", "text": text})
        self.partial_text = ""
        self.last_text = text
        self.text_blocks.append(text)
        self.output_tokens += max(1, len(text) // 4)

    def permitted(self, tool: str) -> bool:
        """Whether claude would let this tool run in --print mode with these flags."""
        if self.options.skip_permissions or tool in READ_ONLY_TOOLS:
            return True
        return any(fnmatch.fnmatchcase(tool, rule.split("(", 1)[0])
                   for rule in self.options.allowed_tools)

    def use_tool(self, name: str, tool_input: dict[str, Any], content: Any) -> None:
        """A tool_use line, then the user line with its tool_result (denied if not allowed)."""
        tool_use_id = f"toolu_{uuid.uuid4().hex[:24]}"
        self._assistant(f"msg_{uuid.uuid4().hex[:24]}", {
            "type": "tool_use", "id": tool_use_id, "name": name, "input": tool_input})
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id}
        decision: dict[str, Any] | None = None
        if not self.permitted(name) and self.ask_permission is not None:
            decision = self.ask_permission(name, tool_input, tool_use_id)
            if decision is None:
                raise Interrupted
        if self.permitted(name) or (decision or {}).get("behavior") == "allow":
            result.update(content=content, is_error=False)
        else:
            denial = (decision or {}).get("message") or (
                f"Claude requested permissions to use {name}, but you haven't granted it yet.")
            result.update(is_error=True, content=str(denial))
            self.denials.append({"tool_name": name, "tool_use_id": tool_use_id,
                                 "tool_input": tool_input})
        self.line(self.envelope("user", {"role": "user", "content": [result]}))
        self.turns += 1

    def result(self, text: str, *, is_error: bool = False, subtype: str = "success",
               errors: list[str] | None = None, api_error_status: int | None = None) -> None:
        """The final result line (stream-json), or the answer itself (text)."""
        if self.mirror is not None:
            self.mirror.before_result(text)
        input_tokens = max(1, len(self.prompt) // 4)
        usage = {"input_tokens": input_tokens, "cache_creation_input_tokens": CACHE_WRITE_TOKENS,
                 "cache_read_input_tokens": CACHE_READ_TOKENS, "output_tokens": self.output_tokens,
                 "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
                 "service_tier": "standard"}
        turn_cost = (input_tokens * 3e-6 + self.output_tokens * 15e-6
                     + CACHE_WRITE_TOKENS * 3.75e-6 + CACHE_READ_TOKENS * 0.3e-6)
        cost = round(self.cost_before + turn_cost, 8)
        duration_ms = int((time.monotonic() - self.started) * 1000)
        self.result_cost = cost
        # modelUsage is cumulative over a live process (as claude's is), like total_cost_usd.
        before = self.model_usage_before
        model_usage = {
            "inputTokens": int(before.get("inputTokens", 0)) + input_tokens,
            "outputTokens": int(before.get("outputTokens", 0)) + self.output_tokens,
            "cacheReadInputTokens": int(before.get("cacheReadInputTokens", 0))
            + CACHE_READ_TOKENS,
            "cacheCreationInputTokens": int(before.get("cacheCreationInputTokens", 0))
            + CACHE_WRITE_TOKENS,
            "webSearchRequests": 0, "costUSD": cost, "contextWindow": 200000}
        self.result_model_usage = model_usage
        message: dict[str, Any] = {
            "type": "result", "subtype": subtype, "is_error": is_error,
            "duration_ms": duration_ms, "duration_api_ms": duration_ms, "num_turns": self.turns,
            "result": text, "session_id": self.session_id, "total_cost_usd": cost,
            "usage": usage,
            "modelUsage": {self.options.model: model_usage},
            "permission_denials": self.denials, "uuid": str(uuid.uuid4()),
        }
        if api_error_status is not None:
            message["api_error_status"] = api_error_status
        if errors is not None:
            message["errors"] = errors
        if self.stream:
            self.line(message)
        elif self.options.output_format == "json":
            self.write(json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n")
        else:
            self.write(text.encode("utf-8", errors="surrogatepass") + b"\n")

    def interrupted_result(self) -> None:
        """What claude prints after SIGINT: the partial answer, a user note, an error result."""
        if self.partial_text:
            self._assistant(f"msg_{uuid.uuid4().hex[:24]}",
                            {"type": "text", "text": self.partial_text})
        self.line(self.envelope("user", {"role": "user", "content": [
            {"type": "text", "text": "[Request interrupted by user]"}]}))
        self.result("", is_error=True, subtype="error_during_execution",
                    errors=["[Request interrupted by user]"])


# -- behaviours -------------------------------------------------------------------------------

CANVAS_FROM_TOOL = {"action": "add_node",
                    "node": {"id": "standin-node-1", "type": "design_variable",
                             "label": "thickness"}}
CANVAS_FROM_TEXT = {"action": "add_edge",
                    "edge": {"source": "standin-node-1", "target": "objective"}}


def behave_echo(agent: Agent, message: str, argument: str | None) -> int:
    """Answer 'echo: <message>'."""
    agent.say(f"echo: {message}")
    agent.result(agent.last_text)
    return 0


def behave_canvas(agent: Agent, message: str, argument: str | None) -> int:
    """A canvas tool call with a modification in its result, and one more in the text."""
    agent.say("I will add the design variable to the canvas.")
    agent.use_tool(CANVAS_TOOL, {"modification": CANVAS_FROM_TOOL}, [
        {"type": "text", "text": json.dumps({"success": True, "modification": CANVAS_FROM_TOOL})}
    ])
    fence = json.dumps({"modification": CANVAS_FROM_TEXT}, indent=2)
    agent.say(f"Added the node. Connect it to the objective too:\n\n```json\n{fence}\n```\n")
    agent.result(agent.last_text)
    return 0


def behave_tool(agent: Agent, message: str, argument: str | None) -> int:
    """A Read tool call with its (made-up) result, then an answer."""
    path = os.path.join(os.getcwd(), "README.md")
    agent.use_tool("Read", {"file_path": path}, "     1\tstand-in file contents\n")
    agent.say(f"I read {path}: it says 'stand-in file contents'.")
    agent.result(agent.last_text)
    return 0


def behave_slow(agent: Agent, message: str, argument: str | None) -> int:
    """Stream the echo answer over SECONDS."""
    agent.say(f"echo: {message}", over_seconds=number_argument("slow", argument, 5.0))
    agent.result(agent.last_text)
    return 0


def behave_fail(agent: Agent, message: str, argument: str | None) -> int:
    """stderr and exit 1, no output."""
    sys.stderr.write("Error: the stand-in agent failed on purpose (behaviour 'fail')\n")
    sys.stderr.flush()
    return 1


def behave_error(agent: Agent, message: str, argument: str | None) -> int:
    """API retries, a synthetic assistant line, an is_error result with subtype success."""
    error_body = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    for attempt in (1, 2):
        agent.line({"type": "system", "subtype": "api_retry", "attempt": attempt,
                    "max_retries": 2, "retry_delay_ms": 500 * attempt, "error_status": 529,
                    "error": "overloaded_error", "session_id": agent.session_id,
                    "uuid": str(uuid.uuid4())})
    text = f"API Error: 529 {error_body}"
    agent.line({**agent.envelope("assistant", {
        "id": str(uuid.uuid4()), "model": "<synthetic>", "role": "assistant",
        "stop_reason": "stop_sequence", "stop_sequence": "", "type": "message",
        "usage": {"input_tokens": 0, "output_tokens": 0},
        "content": [{"type": "text", "text": text}]}), "error": "unknown"})
    agent.result(text, is_error=True, subtype="success", api_error_status=529)
    return 1


def behave_huge(agent: Agent, message: str, argument: str | None) -> int:
    """MB megabytes of answer, as one assistant line and one result line (no deltas)."""
    size = int(number_argument("huge", argument, 1.0) * 1024 * 1024)
    block = (b"abcdefghijklmnopqrstuvwxyz" * 40330)[: 1024 * 1024]

    def body() -> None:
        remaining = size
        while remaining > 0:
            agent.write(block[:remaining])
            remaining -= len(block)

    if agent.stream:
        envelope = agent.envelope("assistant", {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "model": agent.options.model, "content": [{"type": "text", "text": "@@"}],
            "stop_reason": None})
        head, tail = json.dumps(envelope, separators=(",", ":")).split("@@")
        agent.write(head.encode())
        body()
        agent.write(tail.encode() + b"\n")
        result_head, result_tail = json.dumps({
            "type": "result", "subtype": "success", "is_error": False, "result": "@@",
            "session_id": agent.session_id, "total_cost_usd": 0.01, "num_turns": 1,
            "usage": {"input_tokens": 10, "output_tokens": size // 4}}).split("@@")
        agent.write(result_head.encode())
        body()
        agent.write(result_tail.encode() + b"\n")
    else:
        body()
        agent.write(b"\n")
    return 0


def behave_garbage(agent: Agent, message: str, argument: str | None) -> int:
    """Malformed, non-object, unknown and invalid UTF-8 lines around a valid echo answer."""
    garbage = [b"this is not JSON at all", b'{"type": "assistant", "broken', b"[1, 2, 3]",
               b'"just a string"', b"\xff\xfe invalid \xc3\x28 utf-8",
               b'{"type": "mystery_line", "payload": 1}', b"", b"{}"]
    if agent.stream:
        for line in garbage[:4]:
            agent.write(line + b"\n")
    agent.say(f"echo: {message}")
    if agent.stream:
        for line in garbage[4:]:
            agent.write(line + b"\n")
    agent.result(agent.last_text)
    return 0


def behave_noresult(agent: Agent, message: str, argument: str | None) -> int:
    """An answer, then exit 0 without a result line."""
    agent.say(f"echo: {message}")
    if not agent.stream:
        agent.write(agent.last_text.encode("utf-8", errors="surrogatepass") + b"\n")
    return 0


CHILD_SCRIPT = (
    "import signal, time\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "time.sleep(600)\n"
)


def behave_spawn(agent: Agent, message: str, argument: str | None) -> int:
    """Start a long-sleeping child that ignores SIGINT/SIGTERM, then sleep too."""
    seconds = number_argument("spawn", argument, 300.0)
    child = subprocess.Popen([sys.executable, "-c", CHILD_SCRIPT], stdin=subprocess.DEVNULL)
    pid_file = os.environ.get("CHATLEDGER_STANDIN_CHILD_PID_FILE")
    if pid_file:
        temporary = f"{pid_file}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(f"{child.pid}\n")
        os.replace(temporary, pid_file)
    sys.stderr.write(f"stand-in: started child process {child.pid}\n")
    sys.stderr.flush()
    agent.sleep(seconds)
    agent.say(f"echo: {message}")
    agent.result(agent.last_text)
    return 0


def behave_ignore_term(agent: Agent, message: str, argument: str | None) -> int:
    """Sleep with SIGINT and SIGTERM ignored (set up in `run`): only SIGKILL stops it early."""
    agent.sleep(number_argument("ignore-term", argument, 300.0))
    agent.say(f"echo: {message}")
    agent.result(agent.last_text)
    return 0


def behave_prompt(agent: Agent, message: str, argument: str | None,
                  earlier: Sequence[dict[str, str]] = ()) -> int:
    """Answer with the prompt received, after the earlier turns of a resumed session."""
    parts = [f"{turn.get('prompt', '')}\n\n{turn.get('answer', '')}" for turn in earlier]
    agent.say("\n\n".join([*parts, agent.prompt]))
    agent.result(agent.last_text)
    return 0


def behave_write(agent: Agent, message: str, argument: str | None) -> int:
    """Call the Write tool (not allowed in user mode without an allow-list entry: with
    `--permission-prompt-tool stdio` it is put to the caller), then say how it went."""
    path = os.path.join(os.getcwd(), argument or "standin-output.txt")
    before = len(agent.denials)
    agent.use_tool("Write", {"file_path": path, "content": message}, f"File created at {path}")
    agent.say(f"I could not write {path}." if len(agent.denials) > before else f"I wrote {path}.")
    agent.result(agent.last_text)
    return 0


def behave_retry_stream(agent: Agent, message: str, argument: str | None) -> int:
    """A stream broken mid-answer, retried without streaming: deltas of a first attempt
    that never ends, then the whole answer as an assistant line with a new message id."""
    agent._stream_event({"type": "message_start", "message": {
        "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
        "model": agent.options.model, "content": [], "stop_reason": None}})
    agent._stream_event({"type": "content_block_start", "index": 0,
                         "content_block": {"type": "text", "text": ""}})
    for piece in ("...completed ", "norm"):
        agent._stream_event({"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": piece}})
    text = f"echo: {message}"
    agent._assistant(f"msg_{uuid.uuid4().hex[:24]}", {"type": "text", "text": text})
    agent.last_text = text
    agent.text_blocks.append(text)
    agent.result(text)
    return 0


Behaviour = Callable[[Agent, str, "str | None"], int]

HANDLERS: dict[str, Behaviour] = {
    "echo": behave_echo,
    "canvas": behave_canvas,
    "tool": behave_tool,
    "slow": behave_slow,
    "fail": behave_fail,
    "error": behave_error,
    "huge": behave_huge,
    "garbage": behave_garbage,
    "noresult": behave_noresult,
    "spawn": behave_spawn,
    "ignore-term": behave_ignore_term,
    "prompt": behave_prompt,
    "write": behave_write,
    "retry-stream": behave_retry_stream,
}
