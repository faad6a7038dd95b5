"""The stand-in agent: claude's flags and line shapes, behaviour selection, sessions, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from testkit import STANDIN

from chatledger.agent import STANDIN as STANDIN_DIALECT
from chatledger.agent import McpConfigFiles, TurnOptions
from chatledger.testing.standin import (
    BEHAVIOURS,
    choose_behaviour,
    current_message,
    parse_options,
    split_tool_rules,
    without_markers,
)

STREAM = ["--print", "--output-format", "stream-json", "--verbose"]
LINE_TYPES = {"system", "assistant", "user", "stream_event", "result"}


def standin(*flags: str, prompt: str = "## Message\nhi", env: dict[str, str] | None = None,
            timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    environment = {k: v for k, v in os.environ.items() if k != "CHATLEDGER_STANDIN_BEHAVIOUR"}
    environment.update(env or {})
    return subprocess.run([*STANDIN, *flags], input=prompt.encode(), capture_output=True,
                          env=environment, timeout=timeout, check=False)


def lines(output: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_the_current_message_is_after_the_last_message_header() -> None:
    prompt = "intro\n## Message\nold [[fail]]\n\n## Message\n  new one [[slow 2]]\n"
    assert current_message(prompt) == "new one [[slow 2]]"
    assert current_message("no header at all ") == "no header at all"


def test_behaviour_comes_from_the_flag_then_the_environment_then_a_marker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CHATLEDGER_STANDIN_BEHAVIOUR", raising=False)
    message = "please [[nonsense]] [[huge 2]] then [[canvas]]"
    assert choose_behaviour(parse_options([]), message) == ("huge", "2")
    assert choose_behaviour(parse_options([]), "plain") == ("echo", None)
    monkeypatch.setenv("CHATLEDGER_STANDIN_BEHAVIOUR", "slow 0.5")
    assert choose_behaviour(parse_options([]), message) == ("slow", "0.5")
    assert choose_behaviour(parse_options(["--behaviour", "tool"]), message) == ("tool", None)
    assert without_markers(message) == "please [[nonsense]] then"


def test_claude_flags_are_understood_and_unknown_ones_ignored() -> None:
    options = parse_options([
        "--print", "--output-format=stream-json", "--verbose", "--include-partial-messages",
        "--mcp-config", "/m.json", "--allowedTools", "Read Bash(git log:*)", "mcp__a__*",
        "--resume", "r-1", "--model", "opus", "--some-new-flag", "value", "--fork-session",
    ])
    assert options.output_format == "stream-json" and options.partial_messages
    assert options.mcp_config == "/m.json" and options.resume == "r-1"
    assert options.allowed_tools == ["Read", "Bash(git log:*)", "mcp__a__*"]
    assert options.model == "opus" and options.fork_session and not options.skip_permissions
    assert split_tool_rules("A,B  C(x y, z)") == ["A", "B", "C(x y, z)"]


def test_the_standin_reads_the_argv_of_its_dialect_in_flag_equals_value_form() -> None:
    argv = STANDIN_DIALECT.turn_argv(STANDIN, TurnOptions(
        mode="user", allowed_tools=("Read", "Bash(git log:*)"), mcp_config_path="/m.json",
        include_partial_messages=True, resume_session_id="r-1"))
    options = parse_options(argv[len(STANDIN):])
    assert options.mcp_config == "/m.json" and options.resume == "r-1"
    assert options.allowed_tools == ["Read", "Bash(git log:*)"] and options.partial_messages


def test_only_the_configured_mcp_servers_are_loaded_with_strict_mcp_config(
    tmp_path: Path,
) -> None:
    files = McpConfigFiles(tmp_path / "mcp", STANDIN_DIALECT.mcp_config_document)
    path = files.path_for("s", "power", {"only-this": {"command": "true"}})
    argv = STANDIN_DIALECT.turn_argv(STANDIN, TurnOptions(mode="power", mcp_config_path=path))
    assert "--strict-mcp-config" in argv
    done = subprocess.run(argv, input=b"## Message\nhi", capture_output=True, timeout=20,
                          check=False)
    init = lines(done.stdout)[0]
    assert done.returncode == 0, done.stderr
    assert init["mcp_servers"] == [{"name": "only-this", "status": "connected"}]


def test_the_old_module_name_still_runs_the_standin() -> None:
    done = subprocess.run([sys.executable, "-m", "chatledger.agent.standin", *STREAM],
                          input=b"## Message\nstill here", capture_output=True, timeout=20,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout)[-1]["result"] == "echo: still here"


@pytest.mark.parametrize("behaviour", ["echo", "canvas", "tool", "error", "prompt", "slow 0.1"])
def test_every_stream_json_line_has_claudes_shape(behaviour: str) -> None:
    done = standin(*STREAM, "--include-partial-messages", "--dangerously-skip-permissions",
                   "--behaviour", behaviour)
    output = lines(done.stdout)
    assert {line["type"] for line in output} <= LINE_TYPES
    assert output[0]["type"] == "system" and output[0]["subtype"] == "init"
    assert output[-1]["type"] == "result"
    session = output[0]["session_id"]
    assert all(line.get("session_id") == session for line in output if "session_id" in line)
    for line in output:
        if line["type"] == "assistant":
            assert len(line["message"]["content"]) == 1  # one line per content block
    result = output[-1]
    assert result["total_cost_usd"] > 0 and result["usage"]["input_tokens"] > 0
    assert done.returncode == (1 if behaviour == "error" else 0)


def test_text_format_prints_only_the_answer() -> None:
    done = standin("--print", "--output-format", "text", prompt="## Message\nsay this")
    assert done.returncode == 0 and done.stdout == b"echo: say this\n"


def test_stream_json_without_verbose_is_refused_like_claude() -> None:
    done = standin("--print", "--output-format", "stream-json")
    assert done.returncode == 1 and b"requires --verbose" in done.stderr


def test_a_canvas_tool_is_denied_without_permission_and_allowed_with_it() -> None:
    denied = lines(standin(*STREAM, "--allowedTools", "Read", "--behaviour", "canvas").stdout)
    result = next(b for line in denied if line["type"] == "user"
                  for b in line["message"]["content"])
    assert result["is_error"] and "haven't granted" in result["content"]
    assert denied[-1]["permission_denials"][0]["tool_name"].endswith("apply_canvas_change")
    allowed = lines(standin(*STREAM, "--allowedTools", "mcp__atomizer-tools__*",
                            "--behaviour", "canvas").stdout)
    result = next(b for line in allowed if line["type"] == "user"
                  for b in line["message"]["content"])
    assert not result["is_error"] and "modification" in json.loads(result["content"][0]["text"])


def test_prompts_are_recorded_when_asked(tmp_path: Path) -> None:
    standin(*STREAM, prompt="## Message\nfirst", env={"CHATLEDGER_STANDIN_RECORD": str(tmp_path)})
    standin(*STREAM, prompt="## Message\nsecond",
            env={"CHATLEDGER_STANDIN_RECORD": str(tmp_path)})
    recorded = sorted(p.read_text() for p in tmp_path.iterdir())
    assert recorded == ["## Message\nfirst", "## Message\nsecond"]


def test_sessions_are_remembered_resumed_and_refused_like_claude(tmp_path: Path) -> None:
    env = {"CHATLEDGER_STANDIN_SESSIONS": str(tmp_path)}
    session = "0b4e3c1a-7d2f-4f1e-9a53-2a7f0c9e1d11"
    first = standin(*STREAM, "--session-id", session, prompt="## Message\nremember 42", env=env)
    assert first.returncode == 0 and lines(first.stdout)[-1]["session_id"] == session
    reused = standin(*STREAM, "--session-id", session, env=env)
    assert reused.returncode == 1 and b"is already in use" in reused.stderr
    resumed = standin(*STREAM, "--resume", session, prompt="## Message\n[[prompt]] number?",
                      env=env)
    result = lines(resumed.stdout)[-1]
    assert resumed.returncode == 0 and result["session_id"] == session
    assert "remember 42" in result["result"] and "echo: remember 42" in result["result"]
    unknown = standin(*STREAM, "--resume", "not-a-session", env=env)
    assert unknown.returncode == 1
    result = lines(unknown.stdout)[-1]
    assert result["is_error"]
    assert result["errors"] == ["No conversation found with session ID: not-a-session"]


def test_a_resume_without_a_sessions_directory_is_accepted() -> None:
    done = standin(*STREAM, "--resume", "any-id")
    assert done.returncode == 0 and lines(done.stdout)[-1]["session_id"] == "any-id"


def test_sigint_prints_an_interrupted_result_and_sigterm_exits_143() -> None:
    environment = {k: v for k, v in os.environ.items() if k != "CHATLEDGER_STANDIN_BEHAVIOUR"}
    for sent, expected_exit in ((signal.SIGINT, 0), (signal.SIGTERM, 143)):
        process = subprocess.Popen([*STANDIN, *STREAM, "--behaviour", "slow 30"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=environment)
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(b"## Message\nwait")
            process.stdin.close()
            assert json.loads(process.stdout.readline())["subtype"] == "init"
            process.send_signal(sent)
            process.wait(10)  # its few lines fit in the pipe: it never blocks on stdout
            output = process.stdout.read()
        finally:
            process.kill()
            process.wait(10)
        assert process.returncode == expected_exit
        if sent == signal.SIGINT:
            result = lines(output)[-1]
            assert result["is_error"] and result["subtype"] == "error_during_execution"
        else:
            assert b'"type":"result"' not in output


def test_help_lists_every_behaviour_and_a_bad_one_is_a_usage_error() -> None:
    helped = standin("--help")
    assert helped.returncode == 0
    assert all(name.encode() in helped.stdout for name in BEHAVIOURS)
    bad = standin(*STREAM, "--behaviour", "dance")
    assert bad.returncode == 2 and b"unknown behaviour 'dance'" in bad.stderr
    bad_number = standin(*STREAM, "--behaviour", "slow soon")
    assert bad_number.returncode == 2 and b"expects a number" in bad_number.stderr
