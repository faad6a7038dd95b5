"""A stand-in for `claude --print`: same flags, same stream-json lines, scripted behaviours.

Run it as `python -m chatledger.testing.standin [claude flags...] [--behaviour NAME [ARG]]`. It
reads the prompt from stdin and answers like the real CLI (system/init, `stream_event` deltas
with `--include-partial-messages`, one assistant line per content block, user lines with
tool results, the final result; or plain text with `--output-format text`), for tests, the
demo, and anyone who wants to exercise a backend without paying for an LLM. It never talks
to a network.

The behaviour comes from `--behaviour NAME`, else `$CHATLEDGER_STANDIN_BEHAVIOUR`, else the
first `[[NAME]]` or `[[NAME ARG]]` marker in the current message (the text after the last
`## Message` line of the prompt), else `echo`. See BEHAVIOURS. Other environment variables:
CHATLEDGER_STANDIN_RECORD (a directory: each prompt is saved there as a file),
CHATLEDGER_STANDIN_SESSIONS (a directory: sessions are remembered, resuming an unknown one
fails like claude, and `prompt` answers include the earlier turns of a resumed session),
CHATLEDGER_STANDIN_CHILD_PID_FILE (where `spawn` writes its child's pid). This module reads
the flags, the prompt and the sessions; what a turn prints lives in `standin_agent`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import NoReturn

from ..agent.prompt import MESSAGE_HEADER
from .standin_agent import (
    HANDLERS,
    STANDIN_MODEL,
    STANDIN_VERSION,
    Agent,
    Interrupted,
    UsageError,
    behave_prompt,
)
from .standin_mirror import TranscriptMirror

BEHAVIOURS: dict[str, str] = {
    "echo": "answer 'echo: <message>'",
    "canvas": "call mcp__atomizer-tools__apply_canvas_change (result with a modification), "
              "then answer with another modification in a JSON code fence",
    "tool": "call the Read tool and answer with what it returned",
    "slow": "[[slow SECONDS]]: stream the echo answer over SECONDS (default 5); SIGINT prints "
            "an interrupted result and exits 0, SIGTERM exits 143",
    "fail": "print an error on stderr and exit 1",
    "error": "API retries, then a result with is_error true but subtype 'success'; exit 1",
    "huge": "[[huge MB]]: answer MB megabytes (default 1) as single long lines",
    "garbage": "interleave malformed, non-object, unknown and invalid UTF-8 lines with an echo",
    "noresult": "print an answer but no result line; exit 0",
    "spawn": "[[spawn SECONDS]]: start a child that ignores SIGINT/SIGTERM and sleeps, then "
             "sleep SECONDS (default 300) too",
    "ignore-term": "[[ignore-term SECONDS]]: ignore SIGINT and SIGTERM and sleep SECONDS "
                   "(default 300)",
    "prompt": "answer with the whole prompt received (and a resumed session's earlier turns)",
    "write": "[[write NAME]]: call the Write tool (denied in user mode unless allowed or, with "
             "--permission-prompt-tool stdio, approved by the caller), then say how it went",
    "retry-stream": "stream part of an answer, then (as claude after a broken stream) the "
                    "whole answer as an assistant line with a new message id",
}
"""Behaviour name -> what it does."""

MARKER = re.compile(r"\[\[([a-z][a-z-]*)(?:[ \t]+([^\]\s][^\]]*?))?[ \t]*\]\]")

VALUE_FLAGS = {
    "--output-format", "--input-format", "--mcp-config", "--resume", "-r", "--session-id",
    "--model", "--behaviour", "--behavior", "--permission-mode", "--append-system-prompt",
    "--system-prompt", "--max-turns", "--fallback-model", "--settings", "--add-dir",
    "--agents", "--setting-sources", "--max-budget-usd", "--permission-prompt-tool",
}
LIST_FLAGS = {"--allowedTools", "--allowed-tools", "--disallowedTools", "--disallowed-tools"}
BOOLEAN_FLAGS = {
    "--print", "-p", "--verbose", "--include-partial-messages",
    "--dangerously-skip-permissions", "--continue", "-c", "--fork-session", "--bare",
    "--debug", "-d", "--strict-mcp-config", "--session-mirror",
}


@dataclass
class Options:
    """The flags the stand-in understood."""

    output_format: str = "text"
    input_format: str = "text"
    permission_prompt_tool: str | None = None
    partial_messages: bool = False
    mcp_config: str | None = None
    allowed_tools: list[str] = field(default_factory=list)
    skip_permissions: bool = False
    resume: str | None = None
    session_id: str | None = None
    fork_session: bool = False
    session_mirror: bool = False
    model: str = STANDIN_MODEL
    behaviour: str | None = None
    positional: list[str] = field(default_factory=list)
    show_help: bool = False
    show_version: bool = False


def split_tool_rules(value: str) -> list[str]:
    """Split an allow-list on spaces and commas, but not inside parentheses."""
    rules: list[str] = []
    current = ""
    depth = 0
    for character in value:
        if character == "(":
            depth += 1
        elif character == ")":
            depth = max(0, depth - 1)
        if character in " ,\t" and depth == 0:
            if current:
                rules.append(current)
            current = ""
        else:
            current += character
    if current:
        rules.append(current)
    return rules


def parse_options(args: Sequence[str]) -> Options:
    """Read claude's flags (and --behaviour); unknown flags are ignored."""
    options = Options()
    index = 0
    while index < len(args):
        word = args[index]
        index += 1
        flag, has_inline, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if flag in ("-h", "--help"):
            options.show_help = True
        elif flag in ("-v", "--version"):
            options.show_version = True
        elif flag in BOOLEAN_FLAGS:
            options.partial_messages |= flag == "--include-partial-messages"
            options.skip_permissions |= flag == "--dangerously-skip-permissions"
            options.fork_session |= flag == "--fork-session"
            options.session_mirror |= flag == "--session-mirror"
        elif flag in LIST_FLAGS:
            values = [inline] if has_inline else []
            while not has_inline and index < len(args) and not args[index].startswith("-"):
                values.append(args[index])
                index += 1
            if flag in ("--allowedTools", "--allowed-tools"):
                for value in values:
                    options.allowed_tools += split_tool_rules(value)
        elif flag in VALUE_FLAGS:
            if has_inline:
                value = inline
            elif index < len(args):
                value = args[index]
                index += 1
            else:
                raise UsageError(f"error: option '{flag}' argument missing")
            _set_value(options, flag, value)
        elif word.startswith("-") and word != "-":
            if not has_inline and index < len(args) and not args[index].startswith("-"):
                index += 1  # an unknown flag's value, most likely
        else:
            options.positional.append(word)
    return options


def _set_value(options: Options, flag: str, value: str) -> None:
    if flag == "--output-format":
        if value not in ("text", "json", "stream-json"):
            raise UsageError(f"error: option '--output-format' argument '{value}' is invalid")
        options.output_format = value
    elif flag == "--input-format":
        if value not in ("text", "stream-json"):
            raise UsageError(f"error: option '--input-format' argument '{value}' is invalid")
        options.input_format = value
    elif flag == "--permission-prompt-tool":
        options.permission_prompt_tool = value
    elif flag == "--mcp-config":
        options.mcp_config = value
    elif flag in ("--resume", "-r"):
        options.resume = value
    elif flag == "--session-id":
        options.session_id = value
    elif flag == "--model":
        options.model = value
    elif flag in ("--behaviour", "--behavior"):
        options.behaviour = value


def current_message(prompt: str) -> str:
    """The text after the last `## Message` line (the whole prompt if there is none)."""
    lines = prompt.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].strip() == MESSAGE_HEADER:
            return "\n".join(lines[index + 1 :]).strip()
    return prompt.strip()


def choose_behaviour(options: Options, message: str) -> tuple[str, str | None]:
    """(behaviour, argument): from --behaviour, the environment, a marker, else echo."""
    for source in (options.behaviour, os.environ.get("CHATLEDGER_STANDIN_BEHAVIOUR")):
        if source and source.strip():
            name, _, argument = source.strip().partition(" ")
            if name not in BEHAVIOURS:
                raise UsageError(
                    f"error: unknown behaviour {name!r}; known: {', '.join(BEHAVIOURS)}"
                )
            return name, argument.strip() or None
    for match in MARKER.finditer(message):
        if match.group(1) in BEHAVIOURS:
            return match.group(1), match.group(2)
    return "echo", None


def without_markers(message: str) -> str:
    """The message with behaviour markers taken out."""
    cleaned = MARKER.sub(lambda m: "" if m.group(1) in BEHAVIOURS else m.group(0), message)
    return re.sub(r"[ \t]{2,}", " ", cleaned).strip()


def _safe_session_name(session_id: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_-]{1,128}", session_id))


class SessionStore:
    """Remembered sessions (one JSON-lines transcript per id) in $CHATLEDGER_STANDIN_SESSIONS."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory

    def _path(self, session_id: str) -> str | None:
        if self.directory is None or not _safe_session_name(session_id):
            return None
        return os.path.join(self.directory, f"{session_id}.jsonl")

    def known(self, session_id: str) -> bool:
        """Whether the session was seen before (always True when sessions are not kept)."""
        if self.directory is None:
            return True
        path = self._path(session_id)
        return path is not None and os.path.exists(path)

    def transcript(self, session_id: str) -> list[dict[str, str]]:
        """The earlier turns of a session: prompts and answers."""
        path = self._path(session_id)
        if path is None or not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def remember(self, session_id: str, prompt: str, answer: str) -> None:
        """Add one turn to the session's transcript."""
        path = self._path(session_id)
        if path is None:
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")


def record_prompt(prompt: str) -> None:
    """Save the prompt into $CHATLEDGER_STANDIN_RECORD, one new file per run."""
    directory = os.environ.get("CHATLEDGER_STANDIN_RECORD")
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    name = os.path.join(directory, f"{time.time_ns():020d}-{os.getpid()}.txt")
    descriptor = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(prompt)


def _exit_on_sigterm(signal_number: int, frame: FrameType | None) -> NoReturn:
    """SIGTERM: stop at once with 143, like claude (what was printed so far stays printed)."""
    try:
        sys.stdout.flush()
    finally:
        os._exit(143)


def _usage() -> str:
    lines = ["usage: python -m chatledger.testing.standin [claude flags] [--behaviour NAME [ARG]]",
             "", "The prompt is read from stdin. Behaviours:"]
    lines += [f"  {name:<12} {text}" for name, text in BEHAVIOURS.items()]
    return "\n".join(lines) + "\n"


def run(args: Sequence[str]) -> int:
    """The stand-in's whole life: flags, prompt, sessions, behaviour; returns the exit code."""
    options = parse_options(args)
    if options.show_help:
        sys.stdout.write(_usage())
        return 0
    if options.show_version:
        sys.stdout.write(f"{STANDIN_VERSION} (chatledger stand-in agent)\n")
        return 0
    if options.output_format == "stream-json" and "--verbose" not in args:
        sys.stderr.write("Error: When using --print, --output-format=stream-json requires "
                         "--verbose\n")
        return 1
    if options.input_format == "stream-json":
        if options.output_format != "stream-json":
            sys.stderr.write("Error: --input-format=stream-json requires "
                             "--output-format=stream-json\n")
            return 1
        from .standin_live import run_live
        return run_live(options)
    prompt = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    if not prompt.strip() and options.positional:
        prompt = " ".join(options.positional)
    if not prompt.strip():
        sys.stderr.write("Error: Input must be provided either through stdin or as a prompt "
                         "argument when using --print\n")
        return 1
    record_prompt(prompt)
    message = current_message(prompt)
    behaviour, argument = choose_behaviour(options, message)
    sessions = SessionStore(os.environ.get("CHATLEDGER_STANDIN_SESSIONS"))
    earlier: list[dict[str, str]] = []
    if options.resume is not None:
        if not sessions.known(options.resume):
            agent = Agent(options, prompt, options.resume)
            text = f"No conversation found with session ID: {options.resume}"
            if agent.stream:
                agent.result("", is_error=True, subtype="error_during_execution", errors=[text])
            else:
                sys.stderr.write(text + "\n")
            return 1
        earlier = sessions.transcript(options.resume)
        session_id = str(uuid.uuid4()) if options.fork_session else options.resume
    elif options.session_id is not None:
        if sessions.directory is not None and sessions.known(options.session_id):
            sys.stderr.write(f"Error: Session ID {options.session_id} is already in use.\n")
            return 1
        session_id = options.session_id
    else:
        session_id = str(uuid.uuid4())
    agent = Agent(options, prompt, session_id)
    if options.session_mirror and agent.stream:
        agent.mirror = TranscriptMirror(agent)
    if behaviour == "ignore-term":  # before the init line, so a caller that saw it can rely on it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, agent.on_interrupt)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    cleaned = without_markers(message)
    if behaviour != "fail":
        agent.init()
    try:
        if behaviour == "prompt":
            code = behave_prompt(agent, cleaned, argument, earlier)
        else:
            code = HANDLERS[behaviour](agent, cleaned, argument)
    except Interrupted:
        agent.interrupted_result()
        return 0
    if agent.mirror is not None:
        agent.mirror.after_result()
    if code == 0:
        if options.fork_session:  # a fork starts with the resumed session's turns
            for turn in earlier:
                sessions.remember(session_id, turn.get("prompt", ""), turn.get("answer", ""))
        sessions.remember(session_id, prompt, agent.last_text)
    return code


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: run, map usage errors to exit 2 and a closed stdout to a quiet exit."""
    try:
        code = run(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        sys.stderr.write(f"{error}\n")
        code = 2
    except BrokenPipeError:
        os._exit(1)  # whoever read our stdout went away; nothing left to say
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
