"""Agent dialects, pure (no processes): the registry and how settings choose a dialect, and
each dialect's argv, environment, output readers, classification and MCP file shape."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from chatledger.agent import (
    CLAUDE,
    DIALECTS,
    NOT_FOUND_MESSAGE,
    STANDIN,
    AgentDialect,
    Classification,
    FinishedTurn,
    McpConfigFiles,
    OutputReader,
    ParsedResult,
    RunSpec,
    TextDelta,
    TurnOptions,
    agent_environment,
    build_argv,
    dialect_names,
    get_dialect,
    select_dialect,
)
from chatledger.agent.output_readers import StreamJsonReader, TextReader
from chatledger.config import load_config
from chatledger.errors import ConfigError

TOOLS = ("Read", "Write(**/STUDY_REPORT.md)", "Write(**/3_results/*.md)", "Bash(python:*)",
         "mcp__atomizer-tools__*")
STANDIN_COMMAND = (sys.executable, "-m", "chatledger.testing.standin")
OLD_STANDIN_COMMAND = (sys.executable, "-m", "chatledger.agent.standin")


# -- the registry and the setting ----------------------------------------------------------


def test_claude_and_the_standin_are_registered_by_name() -> None:
    assert dialect_names() == ("claude", "standin")
    assert get_dialect("claude") is CLAUDE and get_dialect("standin") is STANDIN
    assert all(DIALECTS[name].name == name for name in DIALECTS)


def test_an_unknown_dialect_name_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown agent dialect 'codex'.*claude, standin"):
        get_dialect("codex")


def test_without_a_name_the_dialect_is_inferred_from_the_command() -> None:
    assert select_dialect("", ("claude",)) is CLAUDE
    assert select_dialect("", ("/opt/bin/claude", "--model", "opus")) is CLAUDE
    assert select_dialect("", STANDIN_COMMAND) is STANDIN
    assert select_dialect("", list(OLD_STANDIN_COMMAND)) is STANDIN
    assert select_dialect("claude", STANDIN_COMMAND) is CLAUDE  # a name wins


class _EchoDialect:
    """A made-up agent CLI, to show that registering one module is all it takes."""

    name = "echo"
    output_formats = ("text",)
    supports_transcript_mirror = False
    resumes_from_transcript_file = False

    def turn_argv(self, command: Sequence[str], options: TurnOptions) -> list[str]:
        return [*command, "--mode", options.mode]

    def environment_defaults(self, timeout: float) -> Mapping[str, str]:
        return {"ECHO_TIMEOUT": str(timeout)}

    def output_reader(self, output_format: str) -> OutputReader:
        return TextReader()

    def classify(self, turn: FinishedTurn) -> Classification:
        return Classification() if turn.exit_code == 0 else Classification(
            failure_reason="exit_status", message="echo failed")

    def mcp_config_document(self, servers: Mapping[str, Any]) -> dict[str, Any]:
        return {"servers": dict(servers)}

    def not_found_message(self, program: str) -> str:
        return f"no {program}"


def test_a_registered_dialect_is_chosen_by_the_setting_and_checks_its_formats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    echo: AgentDialect = _EchoDialect()
    monkeypatch.setitem(DIALECTS, "echo", echo)
    assert select_dialect("echo", ("echo-cli",)) is echo
    config = load_config(environ={"CHATLEDGER_AGENT_DIALECT": "echo"}, path="/tmp/x",
                         output_format="text")
    assert config.agent_dialect == "echo"
    with pytest.raises(ConfigError, match="output_format.*must be one of text"):
        load_config(environ={}, path="/tmp/x", agent_dialect="echo")


def test_the_setting_defaults_to_inference_and_refuses_unknown_names() -> None:
    assert load_config(environ={}, path="/tmp/x").agent_dialect == ""
    with pytest.raises(ConfigError, match="CHATLEDGER_AGENT_DIALECT.*must be one of claude, "
                                          "standin, or empty"):
        load_config(environ={"CHATLEDGER_AGENT_DIALECT": "codex"}, path="/tmp/x")
    with pytest.raises(ConfigError, match="output_format.*stream-json, text"):
        load_config(environ={}, path="/tmp/x", output_format="json")


# -- claude's argv ---------------------------------------------------------------------------


def test_user_mode_passes_the_allow_list_as_one_space_joined_value() -> None:
    argv = build_argv(["claude"], mode="user", allowed_tools=TOOLS)
    assert argv == [
        "claude", "--print", "--output-format", "stream-json", "--verbose",
        "--allowedTools=Read Write(**/STUDY_REPORT.md) Write(**/3_results/*.md) "
        "Bash(python:*) mcp__atomizer-tools__*",
    ]


def test_an_mcp_config_comes_with_strict_mcp_config_so_only_its_servers_load() -> None:
    argv = build_argv(["claude"], mode="power", allowed_tools=TOOLS, mcp_config_path="/x/m.json")
    assert argv[5:7] == ["--mcp-config=/x/m.json", "--strict-mcp-config"]
    assert "--strict-mcp-config" not in build_argv(["claude"], mode="power", allowed_tools=())


def test_power_mode_skips_permissions_and_never_passes_the_allow_list() -> None:
    argv = build_argv(("claude",), mode="power", allowed_tools=TOOLS)
    assert argv == ["claude", "--print", "--output-format", "stream-json", "--verbose",
                    "--dangerously-skip-permissions"]


def test_text_format_has_no_verbose_and_no_partial_messages() -> None:
    argv = build_argv(["claude"], mode="user", output_format="text", allowed_tools=["Read"],
                      include_partial_messages=True)
    assert argv == ["claude", "--print", "--output-format", "text", "--allowedTools=Read"]


def test_sessions_are_passed_in_flag_equals_value_form() -> None:
    argv = build_argv(["python", "-m", "agent"], mode="user", allowed_tools=[],
                      include_partial_messages=True, resume_session_id="abc")
    assert argv == ["python", "-m", "agent", "--print", "--output-format", "stream-json",
                    "--verbose", "--include-partial-messages", "--resume=abc"]
    fresh = build_argv(["claude"], mode="power", allowed_tools=[], new_session_id="u-1")
    assert fresh[-1] == "--session-id=u-1"


def test_every_value_that_could_look_like_a_flag_is_glued_to_its_flag() -> None:
    argv = build_argv(["claude"], mode="user", allowed_tools=["-x"], mcp_config_path="-m.json",
                      resume_session_id="r1")
    options = argv[1:]
    assert [word for word in options if not word.startswith("--")] == ["stream-json"]


def test_the_prompt_never_goes_into_argv() -> None:
    for mode in ("user", "power"):
        argv = build_argv(["claude"], mode=mode, allowed_tools=TOOLS)
        assert "-" not in argv and "-p" not in argv
        assert isinstance(argv, list) and all(isinstance(word, str) for word in argv)


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"mode": "root"}, "unknown mode 'root'"),
        ({"mode": "user", "output_format": "json"}, "unknown output format"),
        ({"mode": "user", "resume_session_id": "a", "new_session_id": "b"}, "not both"),
        ({"mode": "user", "resume_session_id": "--dangerously-skip-permissions"},
         "must not start with '-'"),
        ({"mode": "user", "allowed_tools": "Read Write"}, "not one string"),
        ({"mode": "user", "allowed_tools": ["Read\nWrite"]}, "line breaks"),
        ({"mode": "user", "mcp_config_path": ""}, "mcp_config_path is empty"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(
    arguments: dict[str, object], problem: str
) -> None:
    arguments.setdefault("allowed_tools", TOOLS)
    with pytest.raises(ValueError, match=problem):
        build_argv(["claude"], **arguments)  # type: ignore[arg-type]


def test_an_empty_command_is_refused() -> None:
    with pytest.raises(ValueError, match="command is empty"):
        build_argv([], mode="user", allowed_tools=TOOLS)


@pytest.mark.parametrize("dialect", [CLAUDE, STANDIN], ids=["claude", "standin"])
def test_a_dialect_turns_turn_options_into_claudes_argv(dialect: AgentDialect) -> None:
    options = TurnOptions(mode="user", allowed_tools=("Read",), mcp_config_path="/m.json",
                          include_partial_messages=True, resume_session_id="s-1")
    assert dialect.turn_argv(["agent"], options) == build_argv(
        ["agent"], mode="user", allowed_tools=("Read",), mcp_config_path="/m.json",
        include_partial_messages=True, resume_session_id="s-1")


# -- environment -------------------------------------------------------------------------------


def test_claude_gets_bounds_on_its_retries_and_api_wait() -> None:
    assert CLAUDE.environment_defaults(7.5) == {"CLAUDE_CODE_MAX_RETRIES": "2",
                                                "API_TIMEOUT_MS": "7500"}
    assert CLAUDE.environment_defaults(3600)["API_TIMEOUT_MS"] == "600000"
    assert CLAUDE.environment_defaults(0.1)["API_TIMEOUT_MS"] == "1000"


def test_the_standin_needs_none_of_claudes_variables() -> None:
    assert STANDIN.environment_defaults(300) == {}


def test_defaults_never_override_what_the_environment_or_the_extras_set() -> None:
    defaults = CLAUDE.environment_defaults(300)
    kept = agent_environment({"CLAUDE_CODE_MAX_RETRIES": "5", "API_TIMEOUT_MS": "1"}, defaults)
    assert kept["CLAUDE_CODE_MAX_RETRIES"] == "5" and kept["API_TIMEOUT_MS"] == "1"
    mixed = agent_environment({"A": "base", "B": "base"}, defaults,
                              {"B": "extra", "API_TIMEOUT_MS": "9"})
    assert mixed == {"A": "base", "B": "extra", "API_TIMEOUT_MS": "9",
                     "CLAUDE_CODE_MAX_RETRIES": "2"}


# -- output readers ----------------------------------------------------------------------------


def test_each_format_gets_its_reader_and_an_unknown_one_is_refused() -> None:
    for dialect in (CLAUDE, STANDIN):
        assert isinstance(dialect.output_reader("stream-json"), StreamJsonReader)
        assert isinstance(dialect.output_reader("text"), TextReader)
        with pytest.raises(ValueError, match="unknown output format 'json'"):
            dialect.output_reader("json")


def test_the_stream_json_reader_splits_chunks_into_lines_anywhere() -> None:
    reader = CLAUDE.output_reader("stream-json")
    line = (b'{"type":"stream_event","event":{"type":"content_block_delta",'
            b'"delta":{"type":"text_delta","text":"hi"}}}\n')
    result = b'{"type":"result","is_error":false,"result":"hi"}'
    updates = reader.feed(line[:10]) + reader.feed(line[10:] + line) + reader.feed(result)
    assert updates == [TextDelta(text="hi"), TextDelta(text="hi")]
    assert [type(update).__name__ for update in reader.end()] == ["AgentResult"]
    assert reader.result().saw_result and reader.result().text == "hi"


def test_the_text_reader_decodes_characters_cut_between_chunks() -> None:
    reader = CLAUDE.output_reader("text")
    encoded = " grüß\n".encode()
    assert reader.feed(encoded[:4]) == [TextDelta(text=" gr")]
    assert reader.feed(encoded[4:]) == [TextDelta(text="üß\n")]
    assert reader.end() == [] and reader.result().text == "grüß"


# -- classification ------------------------------------------------------------------------


def finished(parsed: ParsedResult, exit_code: int | None = 0, stderr_tail: str = "",
             output_format: str = "stream-json") -> FinishedTurn:
    spec = RunSpec(argv=("claude",), prompt="p", output_format=output_format)
    return FinishedTurn(spec=spec, parsed=parsed, exit_code=exit_code, stderr_tail=stderr_tail)


@pytest.mark.parametrize("dialect", [CLAUDE, STANDIN], ids=["claude", "standin"])
def test_a_result_without_is_error_and_exit_0_is_a_success(dialect: AgentDialect) -> None:
    verdict = dialect.classify(finished(ParsedResult(saw_result=True, subtype="error_x")))
    assert verdict == Classification()


@pytest.mark.parametrize("dialect", [CLAUDE, STANDIN], ids=["claude", "standin"])
def test_is_error_fails_the_turn_whatever_its_subtype_says(dialect: AgentDialect) -> None:
    parsed = ParsedResult(saw_result=True, is_error=True, subtype="success",
                          errors=("API Error: 529 overloaded",), api_error_status=529)
    verdict = dialect.classify(finished(parsed, exit_code=1))
    assert verdict.failure_reason == "agent_error"
    assert verdict.message == "API Error: 529 overloaded"
    text_only = dialect.classify(finished(ParsedResult(saw_result=True, is_error=True,
                                                       text="boom", api_error_status=500)))
    assert text_only.message == "boom (API status 500)" and not text_only.agent_session_lost


@pytest.mark.parametrize("dialect", [CLAUDE, STANDIN], ids=["claude", "standin"])
def test_a_missing_result_line_or_a_bad_exit_status_fails_the_turn(
    dialect: AgentDialect,
) -> None:
    no_result = dialect.classify(finished(ParsedResult(), stderr_tail="oops"))
    assert no_result == Classification(failure_reason="exit_status",
                                       message="agent exited without a result line; stderr: oops")
    crashed = dialect.classify(finished(ParsedResult(), exit_code=3))
    assert crashed.failure_reason == "exit_status"
    assert crashed.message == ("CLI error: the agent exited with status 3 and printed nothing "
                               "on stderr")
    text = dialect.classify(finished(ParsedResult(text="fine"), output_format="text"))
    assert text == Classification()  # plain text has no result line to miss


@pytest.mark.parametrize("dialect", [CLAUDE, STANDIN], ids=["claude", "standin"])
def test_a_resume_of_an_unknown_session_is_classified_as_a_lost_session(
    dialect: AgentDialect,
) -> None:
    errors = ("No conversation found with session ID: 4f1c",)
    in_result = dialect.classify(finished(ParsedResult(saw_result=True, is_error=True,
                                                       errors=errors), exit_code=1))
    assert in_result.failure_reason == "agent_error" and in_result.agent_session_lost
    on_stderr = dialect.classify(finished(
        ParsedResult(), exit_code=1, stderr_tail="No conversation found with session ID: x"))
    assert on_stderr.failure_reason == "exit_status" and on_stderr.agent_session_lost


# -- MCP files and messages ------------------------------------------------------------------


def test_claudes_mcp_file_holds_mcp_servers_and_another_dialect_writes_its_own_shape(
    tmp_path: Path,
) -> None:
    servers = {"tools": {"command": "python", "args": ["-m", "tools"]}}
    assert CLAUDE.mcp_config_document(servers) == {"mcpServers": servers}
    assert STANDIN.mcp_config_document(servers) == {"mcpServers": servers}
    files = McpConfigFiles(tmp_path / "mcp", _EchoDialect().mcp_config_document)
    path = files.path_for("s", "user", servers)
    assert json.loads(Path(path).read_text()) == {"servers": servers}


def test_only_claude_suggests_npm_when_its_command_is_missing() -> None:
    assert CLAUDE.not_found_message("claude").startswith(NOT_FOUND_MESSAGE)
    assert "'claude'" in CLAUDE.not_found_message("claude")
    assert "npm" not in STANDIN.not_found_message("python3")
    assert "'python3'" in STANDIN.not_found_message("python3")
