"""The agent's command line: the configured command, claude's flags, and the mode's permissions.

`build_argv` returns a list (never a shell string) that runs one non-interactive turn:
`--print`, the output format, the MCP config file, the permissions of the session's mode
(user: an allow-list of tools; power: no permission checks), and the agent's own session to
start or resume. The prompt goes to the process's stdin, never into argv: current `claude`
releases take a literal `-` argument as prompt text. This module starts nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..events import MODES

OUTPUT_FORMATS = ("stream-json", "text")
"""The output formats the runner can read."""


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
    """Refuse an agent session id that claude could read as a flag: `--resume` takes an
    optional value, so `--resume --dangerously-skip-permissions` would switch permissions off."""
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
) -> list[str]:
    """The argv for one turn: command, `--print`, format, MCP config, permissions, session.

    In user mode the allow-list goes after `--allowedTools` as ONE space-joined argument
    (`--allowedTools "Read Write(**/STUDY_REPORT.md) ..."`, as the old manager passed it); an
    empty allow-list adds no flag. Power mode adds `--dangerously-skip-permissions`.
    Raises ValueError for an unknown mode or output format, an empty command, or both a
    session to resume and a new session id.
    """
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
    argv = [*command, "--print", "--output-format", output_format]
    if output_format == "stream-json":
        argv.append("--verbose")  # claude refuses stream-json in --print mode without it
        if include_partial_messages:
            argv.append("--include-partial-messages")
    if mcp_config_path is not None:
        if not mcp_config_path:
            raise ValueError("mcp_config_path is empty: pass None for no MCP servers")
        argv += ["--mcp-config", mcp_config_path]
    if mode == "user":
        _check_words("allowed_tools", allowed_tools)
        if allowed_tools:
            argv += ["--allowedTools", " ".join(allowed_tools)]
    else:
        argv.append("--dangerously-skip-permissions")
    if resume_session_id is not None:
        _check_session_id("resume_session_id", resume_session_id)
        argv += ["--resume", resume_session_id]
    if new_session_id is not None:
        _check_session_id("new_session_id", new_session_id)
        argv += ["--session-id", new_session_id]
    return argv
