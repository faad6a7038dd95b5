"""The shapes of an agent run: a `RunSpec` goes in, typed updates stream out, a `RunOutcome`
comes back.

Nothing here assumes one process per turn: a spec describes one turn (its argv says how to
start an agent that can take it, its prompt is that turn's input), updates are what the turn
reports while it goes on, and an outcome is how the turn ended. A long-lived agent process
would take many specs one after another and report an outcome per turn (its `exit_code`
then stays None while the process lives). This module holds data only: no I/O, no processes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..events import ModelUsage, ToolCall

DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024 * 1024
DEFAULT_STDERR_TAIL_BYTES = 8 * 1024
DEFAULT_KILL_GRACE = 2.0


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One turn to run: how to start the agent, what to tell it, and the bounds of the run.

    `base_environment` replaces ours as the agent's environment (None: it inherits ours);
    `env_extras` are added on top (settings such as `agent_env`, never recorded); the
    dialect's own defaults are added last, only for variables still unset. Setting `cancel`
    stops the run like a timeout does: a CancelSwitch wakes the run at once, a plain
    threading.Event is looked at every few tens of milliseconds.
    """

    argv: tuple[str, ...]
    prompt: str
    output_format: str = "stream-json"
    timeout: float = DEFAULT_TIMEOUT
    base_environment: Mapping[str, str] | None = None
    env_extras: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    stderr_tail_bytes: int = DEFAULT_STDERR_TAIL_BYTES
    kill_grace: float = DEFAULT_KILL_GRACE
    cancel: threading.Event | None = None
    input_format: str = "text"
    """`stream-json`: the prompt goes as a `user` line and stdin stays open for the control
    protocol (tool approvals) until the result line; the argv must ask the agent for it."""

    def __post_init__(self) -> None:
        """Refuse arguments no run could honour (ValueError)."""
        if not self.argv or not all(isinstance(word, str) for word in self.argv):
            raise ValueError("argv must be a non-empty sequence of strings")
        if not isinstance(self.timeout, (int, float)) or not self.timeout > 0 \
                or math.isnan(self.timeout):
            raise ValueError(f"timeout must be a positive number of seconds, not {self.timeout!r}")
        if self.max_output_bytes < 1 or self.stderr_tail_bytes < 0 or self.kill_grace < 0:
            raise ValueError("max_output_bytes must be positive; stderr_tail_bytes and "
                             "kill_grace must not be negative")


# -- updates: what a run reports while it goes on ------------------------------------------


class TextDelta(msgspec.Struct, frozen=True, kw_only=True, tag="text_delta"):
    """A piece of the agent's answer text, as it arrives."""

    text: str


class ToolCallCompleted(msgspec.Struct, frozen=True, kw_only=True, tag="tool_call_completed"):
    """A tool call whose result arrived (or that never got one, at the end of the run)."""

    tool_call: ToolCall


class AgentInit(msgspec.Struct, frozen=True, kw_only=True, tag="agent_init"):
    """The agent started: its own session id, model, tools and MCP servers."""

    session_id: str | None = None
    model: str | None = None
    tools: tuple[str, ...] = ()
    mcp_servers: tuple[dict[str, Any], ...] = ()
    permission_mode: str | None = None
    cwd: str | None = None
    version: str | None = None


class ApiRetried(msgspec.Struct, frozen=True, kw_only=True, tag="api_retried"):
    """The agent is retrying a failed API request."""

    attempt: int | None = None
    max_retries: int | None = None
    retry_delay_ms: float | None = None
    error_status: int | None = None
    error: str | None = None


class AgentResult(msgspec.Struct, frozen=True, kw_only=True, tag="agent_result"):
    """The agent's final word on the turn: its text, whether it failed, cost and usage."""

    text: str = ""
    is_error: bool = False
    subtype: str | None = None
    errors: tuple[str, ...] = ()
    api_error_status: int | None = None
    cost_usd: float | None = None
    usage: dict[str, Any] | None = None
    session_id: str | None = None
    num_turns: int | None = None
    duration_ms: float | None = None
    permission_denials: tuple[dict[str, Any], ...] = ()
    model_usage: tuple[ModelUsage, ...] = ()


class TranscriptFrame(msgspec.Struct, frozen=True, kw_only=True, tag="transcript_frame"):
    """Entries the agent just appended to its own transcript file (`file_path`), verbatim:
    for the ledger to keep, never for the caller to show (claude's `transcript_mirror`)."""

    file_path: str
    entries: tuple[Any, ...] = ()


class TextReset(msgspec.Struct, frozen=True, kw_only=True, tag="text_reset"):
    """The text streamed so far was not the answer (a broken stream the agent retried without
    streaming): `text` is what the agent really said, replacing the deltas of this block."""

    text: str


AgentUpdate = (
    TextDelta | ToolCallCompleted | AgentInit | ApiRetried | AgentResult | TranscriptFrame
    | TextReset
)
"""Everything a run reports while it goes on."""


# -- what the output amounted to, and how the run ended ------------------------------------


class ParsedResult(msgspec.Struct, frozen=True, kw_only=True):
    """What the agent's whole output for one turn amounted to (a dialect's reader folds it)."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    is_error: bool = False
    errors: tuple[str, ...] = ()
    api_error_status: int | None = None
    cost_usd: float | None = None
    usage: dict[str, Any] | None = None
    agent_session_id: str | None = None
    num_turns: int | None = None
    duration_ms: float | None = None
    subtype: str | None = None
    model: str | None = None
    saw_result: bool = False
    garbage_lines: int = 0
    unknown_lines: int = 0
    diagnostics: tuple[str, ...] = ()
    text_blocks: tuple[str, ...] = ()
    permission_denials: tuple[dict[str, Any], ...] = ()
    model_usage: tuple[ModelUsage, ...] = ()


class Classification(msgspec.Struct, frozen=True, kw_only=True):
    """A dialect's verdict on a finished turn: None as reason means it succeeded."""

    failure_reason: str | None = None
    message: str = ""
    agent_session_lost: bool = False


class RunOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """How one agent run ended: its answer and cost, or why it failed (`failure_reason`).

    In a live process `cost_usd` and `model_usage` are this turn's share and
    `process_cost_usd` and `process_model_usage` the process's cumulative totals (a one-turn
    process leaves those None and empty); `first_token_seconds` is the time from the turn's
    start to the agent's first text, when the caller measured it; `partial_text` is what a failed turn had streamed; `text_blocks` every
    assistant text block; `permission_denials` the tool calls the agent refused.

    `agent_session_lost` says the agent could not find the session it was asked to resume
    (its history is gone): the caller may run the turn again without resuming.
    """

    ok: bool
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    exit_code: int | None = None
    duration: float = 0.0
    cost_usd: float | None = None
    usage: dict[str, Any] | None = None
    agent_session_id: str | None = None
    failure_reason: str | None = None
    message: str = ""
    stderr_tail: str = ""
    pid: int | None = None
    num_turns: int | None = None
    api_error_status: int | None = None
    garbage_lines: int = 0
    diagnostics: tuple[str, ...] = ()
    agent_session_lost: bool = False
    process_cost_usd: float | None = None
    partial_text: str = ""
    text_blocks: tuple[str, ...] = ()
    permission_denials: tuple[dict[str, Any], ...] = ()
    model_usage: tuple[ModelUsage, ...] = ()
    process_model_usage: tuple[ModelUsage, ...] = ()
    first_token_seconds: float | None = None
