"""The claude dialect: Claude Code's `--print` command line, environment and stream-json.

One turn is `claude --print --output-format FORMAT [--verbose --include-partial-messages]
[--mcp-config=FILE --strict-mcp-config] <permissions> [--session-mirror] [--resume=ID |
--session-id=ID]`, the prompt on stdin (current releases take a literal `-` argument as prompt text). Permissions
per mode: user mode passes the allow-list as ONE space-joined `--allowedTools` value (as the
old manager did; an empty list adds no flag), power mode `--dangerously-skip-permissions`.
Values that could pose as flags go in `--flag=value` form. `--strict-mcp-config` keeps the
servers of the agent's `~/.claude.json` and the working directory's `.mcp.json` out.

Success is decided by the result line's `is_error`, never by its `subtype`; a resume of an
unknown session says "No conversation found with session ID". `--session-mirror` (stream-json
only) makes claude print `transcript_mirror` lines: the entries it appends to its transcript
file, some after the result line. This module starts nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ...events import MODES
from ..dialect import FinishedTurn, OutputReader, TurnOptions
from ..output_readers import StreamJsonReader, TextReader
from ..run_types import Classification

NAME = "claude"

OUTPUT_FORMATS = ("stream-json", "text")
"""The output formats the claude dialect can read, the default first."""

NOT_FOUND_MESSAGE = (
    "Claude CLI not found in PATH. Install with: npm install -g @anthropic-ai/claude-code"
)
"""The old manager's message for a missing agent binary; a not_found outcome starts with it."""

NO_CONVERSATION = "No conversation found with session ID"
"""What claude says when asked to resume a session it does not have."""

MAX_RETRIES_DEFAULT = "2"
"""`CLAUDE_CODE_MAX_RETRIES` unless the environment sets it: a dead API fails in seconds."""

MAX_API_TIMEOUT_MS = 600_000
"""claude's own default `API_TIMEOUT_MS`; ours is never above it, nor above the run timeout."""


def _check_words(what: str, words: Sequence[str]) -> None:
    """Refuse words that are not non-empty, single-line strings."""
    if isinstance(words, str):
        raise ValueError(f"{what} must be a sequence of strings, not one string: {words!r}")
    for word in words:
        if not isinstance(word, str) or not word:
            raise ValueError(f"{what} must hold non-empty strings, not {word!r}")
        if "\n" in word or "\r" in word or "\0" in word:
            raise ValueError(f"{what} must not hold line breaks or NUL characters: {word!r}")


def _check_session_id(what: str, session_id: str) -> None:
    """Refuse an agent session id that could be read as a flag anywhere it is copied to
    (the `=` form already keeps claude from reading it as one)."""
    _check_words(what, [session_id])
    if session_id.startswith("-"):
        raise ValueError(f"{what} must not start with '-' (it would be read as a flag): "
                         f"{session_id!r}")


def build_argv(
    command: Sequence[str],
    *,
    mode: str,
    output_format: str = "stream-json",
    allowed_tools: Sequence[str],
    mcp_config_path: str | None = None,
    include_partial_messages: bool = False,
    resume_session_id: str | None = None,
    new_session_id: str | None = None,
    transcript_mirror: bool = False,
    live: bool = False,
    permission_prompt: bool = False,
    fork_session: bool = False,
) -> list[str]:
    """The argv for one claude turn: command, `--print`, format, MCP config, permissions,
    session, transcript mirror. `permission_prompt` (user mode) has claude ask the caller
    about tool calls outside the allow-list (`--permission-prompt-tool stdio`), which needs
    the prompt as a stream-json line on stdin (`--input-format stream-json`) even for one
    turn. Raises ValueError for an unknown mode or output format, an empty command, both a
    session to resume and a new session id, a mirror or approvals asked of text output."""
    if not command:
        raise ValueError("the agent command is empty: configure one, e.g. ('claude',)")
    _check_words("the agent command", command)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(
            f"unknown output format {output_format!r}: expected one of {', '.join(OUTPUT_FORMATS)}"
        )
    if resume_session_id is not None and new_session_id is not None:
        raise ValueError("give either a session to resume or a new session id, not both")
    if live and output_format != "stream-json":
        raise ValueError("a live agent process needs stream-json output, not "
                         f"{output_format!r}")
    prompts = permission_prompt and mode == "user"
    if prompts and output_format != "stream-json":
        raise ValueError(f"tool approvals need stream-json output, not {output_format!r}")
    argv = [*command, "--print", "--output-format", output_format]
    if live or prompts:  # a cold turn with approvals keeps stdin open for their answers
        argv += ["--input-format", "stream-json"]
    if output_format == "stream-json":
        argv.append("--verbose")  # claude refuses stream-json in --print mode without it
        if include_partial_messages:
            argv.append("--include-partial-messages")
    if mcp_config_path is not None:
        if not mcp_config_path:
            raise ValueError("mcp_config_path is empty: pass None for no MCP servers")
        argv += [f"--mcp-config={mcp_config_path}", "--strict-mcp-config"]
    if mode == "user":
        _check_words("allowed_tools", allowed_tools)
        if allowed_tools:
            argv.append("--allowedTools=" + " ".join(allowed_tools))
        if prompts:
            argv += ["--permission-prompt-tool", "stdio"]
    else:
        argv.append("--dangerously-skip-permissions")
    if transcript_mirror:
        if output_format != "stream-json":
            raise ValueError("the transcript mirror needs --output-format stream-json")
        argv.append("--session-mirror")
    if resume_session_id is not None:
        _check_session_id("resume_session_id", resume_session_id)
        argv.append(f"--resume={resume_session_id}")
        if fork_session:  # claude answers under a new session id holding the history
            argv.append("--fork-session")
    elif fork_session:
        raise ValueError("fork_session needs a session to resume")
    if new_session_id is not None:
        _check_session_id("new_session_id", new_session_id)
        argv.append(f"--session-id={new_session_id}")
    return argv


def claude_environment_defaults(timeout: float) -> dict[str, str]:
    """Bounds on claude's own retries: `CLAUDE_CODE_MAX_RETRIES` 2 and `API_TIMEOUT_MS` the
    run timeout (at most claude's own 600000)."""
    api_timeout_ms = max(1000, min(MAX_API_TIMEOUT_MS, int(timeout * 1000)))
    return {"CLAUDE_CODE_MAX_RETRIES": MAX_RETRIES_DEFAULT, "API_TIMEOUT_MS": str(api_timeout_ms)}


def claude_output_reader(output_format: str) -> OutputReader:
    """A reader for claude's stream-json or text output."""
    if output_format == "stream-json":
        return StreamJsonReader()
    if output_format == "text":
        return TextReader()
    raise ValueError(
        f"unknown output format {output_format!r}: expected one of {', '.join(OUTPUT_FORMATS)}"
    )


def _agent_error_message(errors: Sequence[str], text: str, status: int | None) -> str:
    """What an `is_error` result says went wrong: its errors, else its text, plus the status."""
    parts = [part.strip() for part in errors if part.strip()]
    if not parts and text.strip():
        parts = [text.strip()]
    message = "; ".join(parts) or "the agent reported an error"
    if status is not None and str(status) not in message:
        message += f" (API status {status})"
    return message


def classify_claude_turn(turn: FinishedTurn) -> Classification:
    """claude's verdict: an `is_error` result, a non-zero exit, or a stream without its
    result line fail; a lost session is recognised by claude's words for it."""
    parsed, exit_code, stderr_tail = turn.parsed, turn.exit_code, turn.stderr_tail
    stream_json = turn.spec.output_format == "stream-json"
    if stream_json and parsed.saw_result and parsed.is_error:
        verdict = Classification(failure_reason="agent_error", message=_agent_error_message(
            parsed.errors, parsed.text, parsed.api_error_status))
    elif exit_code is not None and exit_code != 0:
        verdict = Classification(failure_reason="exit_status", message="CLI error: " + (
            stderr_tail or f"the agent exited with status {exit_code} and printed nothing "
            "on stderr"))
    elif stream_json and not parsed.saw_result:
        detail = f"; stderr: {stderr_tail}" if stderr_tail else ""
        verdict = Classification(failure_reason="exit_status",
                                 message=f"agent exited without a result line{detail}")
    else:
        return Classification()
    said = " ".join([verdict.message, parsed.text, stderr_tail])
    if NO_CONVERSATION in said:
        verdict = Classification(failure_reason=verdict.failure_reason, message=verdict.message,
                                 agent_session_lost=True)
    return verdict


def claude_mcp_config_document(servers: Mapping[str, Any]) -> dict[str, Any]:
    """claude's `--mcp-config` file: `{"mcpServers": {NAME: {"command", "args", "env"}}}`."""
    return {"mcpServers": dict(servers)}


class ClaudeDialect:
    """Claude Code (`claude --print`), the default dialect."""

    name = NAME
    output_formats = OUTPUT_FORMATS
    supports_transcript_mirror = True
    resumes_from_transcript_file = True

    def turn_argv(self, command: Sequence[str], options: TurnOptions) -> list[str]:
        """claude's argv for one turn (see `build_argv`)."""
        return build_argv(
            command, mode=options.mode, output_format=options.output_format,
            allowed_tools=options.allowed_tools, mcp_config_path=options.mcp_config_path,
            include_partial_messages=options.include_partial_messages,
            resume_session_id=options.resume_session_id, new_session_id=options.new_session_id,
            transcript_mirror=options.transcript_mirror,
            live=options.live, permission_prompt=options.permission_prompt,
            fork_session=options.fork_session,
        )

    def environment_defaults(self, timeout: float) -> Mapping[str, str]:
        """Bounds on claude's own retries and API wait."""
        return claude_environment_defaults(timeout)

    def output_reader(self, output_format: str) -> OutputReader:
        """A stream-json or text reader."""
        return claude_output_reader(output_format)

    def classify(self, turn: FinishedTurn) -> Classification:
        """claude's verdict on the turn."""
        return classify_claude_turn(turn)

    def mcp_config_document(self, servers: Mapping[str, Any]) -> dict[str, Any]:
        """`{"mcpServers": ...}`."""
        return claude_mcp_config_document(servers)

    def not_found_message(self, program: str) -> str:
        """The old manager's npm hint for `claude` itself; for another program (a typo in the
        setting) the configured command and the setting that names it, without the hint."""
        if os.path.basename(program) == "claude":
            return f"{NOT_FOUND_MESSAGE} (no {program!r} was found)"
        return (f"agent command {program!r} not found on PATH; fix CHATLEDGER_AGENT_COMMAND "
                "(setting 'agent_command')")


CLAUDE = ClaudeDialect()
