"""Bad input and bad settings get a clear answer: durations and positions out of range,
non-finite numbers, JSON nested too deeply, oversized messages and canvases, bad agent
commands, invalid UTF-8 in agent output, power mode as root."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from chatledger.agent import CLAUDE, StreamJsonParser
from chatledger.cli import main
from chatledger.config import NUMERIC_RANGES, load_config
from chatledger.errors import ConfigError, InvalidCommandError
from chatledger.events import MessageSent, SessionCreated
from chatledger.ledger import Ledger
from chatledger.storage import EventLog

STANDIN = f"{sys.executable} -m chatledger.agent.standin"


@pytest.fixture
def run(ledger_path: Path) -> Any:
    """Invoke `chatledger --ledger <tmp> ...` in process with the stand-in agent."""
    runner = CliRunner()

    def invoke(*args: str, input: str | bytes | None = None,
               env: dict[str, str] | None = None) -> Result:
        return runner.invoke(
            main, ["--ledger", str(ledger_path), *args], input=input,
            env={"CHATLEDGER_AGENT_COMMAND": STANDIN, "CHATLEDGER_TIMEOUT": "60", **(env or {})},
        )

    return invoke


def assert_clean_error(result: Result, code: int, *words: str) -> None:
    """No traceback, the documented exit code, and a message with these words."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.exit_code == code, result.output
    for word in words:
        assert word in result.output, result.output


@pytest.mark.parametrize("since", ["1e400", "inf", "-inf", "nan", "99999999999d", "1e30w"])
def test_a_since_beyond_any_date_is_a_usage_error(run: Any, since: str) -> None:
    run("new")
    assert_clean_error(run("sessions", "--since", since), 2, "--since")


def test_a_from_position_beyond_64_bits_is_a_usage_error(run: Any) -> None:
    run("new")
    assert_clean_error(run("events", "--from", str(10**23)), 2, "--from")


@pytest.mark.parametrize("idle", ["nan", "inf", "1e400", "1e308", "-1"])
def test_expire_refuses_an_idle_age_that_is_not_a_finite_duration(run: Any, idle: str) -> None:
    session_id = run("new").stdout.strip()
    assert_clean_error(run("expire", "--idle", idle), 2, "--idle")
    assert json.loads(run("show", session_id, "--json").stdout)["status"] != "expired"


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_send_refuses_a_canvas_nested_too_deeply(run: Any, tmp_path: Path) -> None:
    session_id = run("new").stdout.strip()
    canvas = tmp_path / "deep.json"
    canvas.write_text(deep_json(100_000))
    assert_clean_error(run("send", session_id, "hi", "--canvas", str(canvas)), 2, "--canvas",
                       "nested")


@pytest.mark.parametrize("depth", [900, 100_000])
def test_import_refuses_a_line_nested_too_deeply(run: Any, tmp_path: Path, depth: int) -> None:
    source = tmp_path / "source"
    nested: Any = []
    for _ in range(min(depth, 900)):
        nested = [nested]
    with EventLog(source) as log:
        log.append("s", [SessionCreated(), MessageSent(turn=1, text="x", canvas_state=nested)], 0)
    exported = CliRunner().invoke(main, ["--ledger", str(source), "export"]).stdout_bytes
    line = json.loads(exported.splitlines()[1])
    if depth > 900:  # a readable field nested beyond any decoder's depth
        text = json.dumps(line)
        exported = (text[:-1] + ', "extra": ' + deep_json(depth) + "}").encode() + b"\n"
    export = tmp_path / "export.jsonl"
    export.write_bytes(exported)
    result = run("import", str(export))
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 1:
        assert "nested" in result.output or "import rejected" in result.output


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", sorted(NUMERIC_RANGES))
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_every_numeric_setting_refuses_non_finite_values_naming_the_setting(
    setting: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=setting):
        load_config(environ={}, **{setting: float(value)})


@pytest.mark.parametrize("setting", sorted(NUMERIC_RANGES))
def test_every_numeric_setting_refuses_values_outside_its_documented_range(
    setting: str,
) -> None:
    low, high = NUMERIC_RANGES[setting]
    for value in (low - 1, high * 2 + 1):
        with pytest.raises(ConfigError, match=re.escape(f"between {low:g} and {high:g}")):
            load_config(environ={}, **{setting: value})
    load_config(environ={}, **{setting: low})
    load_config(environ={}, **{setting: high})


def test_a_bad_setting_names_where_it_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keyword argument"):
        load_config(environ={}, timeout=float("inf"))
    with pytest.raises(ConfigError, match="CHATLEDGER_TIMEOUT"):
        load_config(environ={"CHATLEDGER_TIMEOUT": "inf"})
    toml = tmp_path / "chatledger.toml"
    toml.write_text("sweep_interval = 1e-9\n")
    with pytest.raises(ConfigError, match=r"sweep_interval.*chatledger\.toml"):
        load_config(environ={}, config_file=toml)


def test_an_empty_agent_command_is_refused_not_read_as_claude() -> None:
    with pytest.raises(ConfigError, match="CHATLEDGER_AGENT_COMMAND"):
        load_config(environ={"CHATLEDGER_AGENT_COMMAND": ""})
    with pytest.raises(ConfigError, match="CHATLEDGER_AGENT_COMMAND"):
        load_config(environ={"CHATLEDGER_AGENT_COMMAND": "   "})


def test_a_missing_agent_names_the_configured_command_and_hints_npm_only_for_claude() -> None:
    other = CLAUDE.not_found_message("pyhton")
    assert "pyhton" in other and "npm" not in other and "CHATLEDGER_AGENT_COMMAND" in other
    claude = CLAUDE.not_found_message("claude")
    assert claude.startswith("Claude CLI not found in PATH") and "npm install" in claude


def test_send_with_a_misspelled_agent_names_it(run: Any) -> None:
    session_id = run("new").stdout.strip()
    result = run("send", session_id, "hi", env={"CHATLEDGER_AGENT_COMMAND": "pyhton -m x"})
    assert_clean_error(result, 1, "'pyhton'")
    assert "npm" not in result.output


# -- sizes ----------------------------------------------------------------------------------


def open_ledger(path: Path, **settings: Any) -> Ledger:
    settings.setdefault("agent_command", STANDIN)
    settings.setdefault("timeout", 30)
    return Ledger(str(path), **settings)


def test_a_message_over_the_size_limit_is_refused_naming_the_setting(ledger_path: Path) -> None:
    with open_ledger(ledger_path, max_message_bytes=4096) as ledger:
        session_id = ledger.create_session().session_id
        with pytest.raises(InvalidCommandError, match="max_message_bytes"):
            ledger.send(session_id, "é" * 2049)
        assert ledger.send(session_id, "é" * 2048).ok
        assert [type(r.event).__name__ for r in ledger.events(session_id)].count(
            "MessageSent") == 1


def test_a_canvas_over_the_size_limit_is_refused_naming_the_setting(ledger_path: Path) -> None:
    with open_ledger(ledger_path, max_canvas_bytes=4096) as ledger:
        session_id = ledger.create_session().session_id
        with pytest.raises(InvalidCommandError, match="max_canvas_bytes"):
            ledger.send(session_id, "hi", canvas_state={"x": "y" * 5000})
        assert len(ledger.events(session_id)) == 1


def test_the_size_limits_have_sane_defaults() -> None:
    config = load_config(environ={})
    assert 1024 * 1024 <= config.max_message_bytes <= 64 * 1024 * 1024
    assert 1024 * 1024 <= config.max_canvas_bytes <= 64 * 1024 * 1024


def test_send_from_the_cli_says_the_message_is_too_big(run: Any) -> None:
    session_id = run("new").stdout.strip()
    result = run("send", session_id, "x" * 5000, env={"CHATLEDGER_MAX_MESSAGE_BYTES": "4096"})
    assert_clean_error(result, 2, "max_message_bytes")


# -- agent output ---------------------------------------------------------------------------


def test_a_result_line_with_invalid_utf8_is_recorded_with_replacement_characters() -> None:
    parser = StreamJsonParser()
    line = (b'{"type":"result","subtype":"success","is_error":false,"session_id":"s",'
            b'"result":"caf\xe9 ok"}')
    parser.feed_line(line)
    finished = parser.finish()
    assert finished.text == "caf\ufffd ok"
    assert finished.garbage_lines == 0
    assert any("invalid UTF-8" in note for note in finished.diagnostics)


# -- power mode as root ---------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_power_mode_as_root_with_claude_needs_is_sandbox(ledger_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IS_SANDBOX", raising=False)
    with open_ledger(ledger_path, agent_command="claude") as ledger:
        session_id = ledger.create_session().session_id
        with pytest.raises(InvalidCommandError, match="IS_SANDBOX=1"):
            ledger.switch_mode(session_id, "power")
        with pytest.raises(InvalidCommandError, match="IS_SANDBOX=1"):
            ledger.create_session(mode="power")
    with open_ledger(ledger_path, agent_command="claude",
                     agent_env={"IS_SANDBOX": "1"}) as ledger:
        assert ledger.switch_mode(session_id, "power").mode == "power"
    with open_ledger(ledger_path) as ledger:  # the stand-in does not care
        assert ledger.switch_mode(session_id, "user").mode == "user"
        assert ledger.switch_mode(session_id, "power").mode == "power"


@pytest.mark.parametrize("name", ["x" * 300, "nul\x00byte"])
def test_a_file_setting_the_system_cannot_look_up_is_refused_by_name(name: str) -> None:
    with pytest.raises(ConfigError, match="CHATLEDGER_MCP_CONFIG"):
        load_config(environ={"CHATLEDGER_MCP_CONFIG": name})
    with pytest.raises(ConfigError, match="config file"):
        load_config(environ={"CHATLEDGER_CONFIG": name})
