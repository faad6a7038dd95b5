"""The CLI as a new user meets it: resume, id prefixes, send on a terminal, colours, filters,
durations, wide text, option order, help and usage errors, imports that create nothing."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from chatledger.cli import main
from chatledger.console import TurnPrinter, display_width, format_duration, table
from chatledger.events import RunFailed, SessionCreated
from chatledger.ledger import Ledger
from chatledger.storage import EventLog, SessionAppend

STANDIN = f"{sys.executable} -m chatledger.agent.standin"


@pytest.fixture
def run(ledger_path: Path) -> Any:
    """Invoke `chatledger --ledger <tmp> ...` in process with the stand-in agent."""
    runner = CliRunner()

    def invoke(*args: str, input: str | bytes | None = None, color: bool = False,
               env: dict[str, str] | None = None, ledger_first: bool = True) -> Result:
        ledger = ["--ledger", str(ledger_path)]
        argv = [*ledger, *args] if ledger_first else [*args, *ledger]
        return runner.invoke(main, argv, input=input, color=color,
                             env={"CHATLEDGER_AGENT_COMMAND": STANDIN, "CHATLEDGER_TIMEOUT": "60",
                                  **(env or {})})

    return invoke


def test_resume_reopens_an_expired_session_and_send_goes_on(run: Any) -> None:
    session_id = run("new").stdout.strip()
    assert run("expire", "--idle", "0").exit_code == 0
    refused = run("send", session_id, "hi")
    assert refused.exit_code == 2 and "resume" in refused.output
    resumed = run("resume", session_id, "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["status"] == "idle"
    assert run("send", session_id, "hello [[echo]]").exit_code == 0


def test_resume_of_an_unknown_session_exits_3(run: Any) -> None:
    run("new")
    assert run("resume", "no-such-session").exit_code == 3


def test_new_with_an_existing_id_says_to_resume_it(run: Any) -> None:
    run("new", "--id", "mine")
    result = run("new", "--id", "mine")
    assert result.exit_code == 2 and "chatledger resume mine" in result.output


def test_a_unique_prefix_names_a_session(run: Any) -> None:
    run("new", "--id", "abc-one")
    run("new", "--id", "xyz-two")
    shown = run("show", "abc", "--json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["session_id"] == "abc-one"
    assert json.loads(run("show", "xyz...", "--json").stdout)["session_id"] == "xyz-two"
    assert run("history", "abc").exit_code == 0
    assert run("mode", "abc", "power").exit_code == 0


def test_an_ambiguous_prefix_lists_the_sessions_it_matches(run: Any) -> None:
    run("new", "--id", "abc-one")
    run("new", "--id", "abc-two")
    result = run("show", "abc")
    assert result.exit_code == 2
    assert "abc-one" in result.output and "abc-two" in result.output
    assert run("show", "nothing-like-it").exit_code == 3


def render(updates: list[dict[str, Any]]) -> str:
    """What a TurnPrinter shows for these updates, stdout and stderr interleaved."""

    @click.command()
    def command() -> None:
        printer = TurnPrinter(color=False)
        for update in updates:
            printer.update(update)

    return CliRunner().invoke(command, []).output


def test_send_prints_annotations_on_their_own_lines() -> None:
    output = render([
        {"type": "text_delta", "content": "adding it to the canvas."},
        {"type": "canvas_modification", "modification": {"action": "add_node"}},
        {"type": "text_delta", "content": "Done."},
        {"type": "text", "content": "adding it to the canvas.Done."},
        {"type": "done", "tool_calls": [{"name": "Read"}]},
    ])
    lines = output.splitlines()
    assert "adding it to the canvas." in lines
    assert any(line.startswith("[canvas] ") for line in lines)
    assert "[tool] Read" in lines


def test_send_on_the_cli_never_glues_an_annotation_to_the_text(run: Any) -> None:
    session_id = run("new").stdout.strip()
    result = run("send", session_id, "change the canvas [[canvas]]")
    assert result.exit_code == 0, result.output
    assert "[canvas]" in result.output and "[tool]" in result.output
    for marker in ("[canvas]", "[tool]"):
        for index in range(len(result.output)):
            if result.output.startswith(marker, index):
                assert index == 0 or result.output[index - 1] == "\n", result.output


def test_send_prints_tool_lines_as_they_happen_between_text_blocks(run: Any) -> None:
    session_id = run("new").stdout.strip()
    output = run("send", session_id, "change the canvas [[canvas]]").output
    tool = "[tool] mcp__atomizer-tools__apply_canvas_change"
    assert output.count(tool) == 1, output
    first, second = "I will add the design variable to the canvas.", "Added the node."
    assert output.index(first) < output.index(tool) < output.index(second), output
    assert f"{first}\n" in output


def test_an_error_after_partial_text_starts_on_its_own_line(run: Any) -> None:
    session_id = run("new").stdout.strip()
    result = run("send", session_id, "hello world this is long [[slow 10]]",
                 env={"CHATLEDGER_TIMEOUT": "2"})
    assert result.exit_code == 1
    assert "\nError: the turn failed (timeout)" in result.output
    assert result.output.count("echo: ") == 1, result.output  # the partial text, once


def test_send_reads_the_message_from_stdin_with_a_dash(run: Any) -> None:
    session_id = run("new").stdout.strip()
    result = run("send", session_id, "-", input="from stdin [[echo]]")
    assert result.exit_code == 0 and "echo: from stdin" in result.stdout


def test_ctrl_c_exits_130(run: Any, ledger_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    session_id = run("new").stdout.strip()

    def interrupted(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(Ledger, "send", interrupted)
    result = run("send", session_id, "hi")
    assert result.exit_code == 130 and "Traceback" not in result.output


def test_ctrl_c_in_a_real_send_exits_130_and_records_the_cancel(ledger_path: Path) -> None:
    environment = {**os.environ, "CHATLEDGER_AGENT_COMMAND": STANDIN}
    command = [sys.executable, "-m", "chatledger", "--ledger", str(ledger_path)]
    session_id = subprocess.run([*command, "new"], capture_output=True, text=True, timeout=60,
                                env=environment, check=True).stdout.strip()
    process = subprocess.Popen([*command, "send", session_id, "a long answer [[slow 30]]"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment)
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=60), "the answer never started"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 130, stderr
    assert b"Traceback" not in stderr
    with EventLog(ledger_path, readonly=True) as log:
        last = log.read_session(session_id)[-1].event
    assert isinstance(last, RunFailed) and last.reason == "cancelled"


def test_no_color_and_color_never_strip_colours_color_always_keeps_them(run: Any) -> None:
    run("new")
    assert "\x1b[" in run("--color", "always", "demo").output
    assert "\x1b[" not in run("demo", color=True, env={"NO_COLOR": "1"}).output
    assert "\x1b[" not in run("--color", "never", "demo", color=True).output


def test_sessions_status_new_matches_a_session_without_messages(run: Any) -> None:
    fresh = run("new").stdout.strip()
    used = run("new").stdout.strip()
    run("send", used, "hi [[echo]]")
    listed = run("sessions", "--status", "new")
    assert fresh in listed.output and used not in listed.output
    as_json = json.loads(run("sessions", "--status", "new", "--json").stdout)
    assert [(info["session_id"], info["status"]) for info in as_json] == [(fresh, "new")]
    assert json.loads(run("show", fresh, "--json").stdout)["status"] == "new"
    assert used in run("sessions", "--status", "idle").output


def test_expire_keeps_last_active(run: Any, ledger_path: Path) -> None:
    long_ago = datetime(2020, 5, 17, 12, 0, 0, tzinfo=timezone.utc)
    with EventLog(ledger_path) as log:
        log.append_atomically([SessionAppend("old", [SessionCreated()], 0,
                                             recorded_at=[long_ago])])
    assert run("expire", "--idle", "1d").exit_code == 0
    assert json.loads(run("show", "old", "--json").stdout)["status"] == "expired"
    shown = [line for line in run("show", "old").output.splitlines()
             if line.startswith("last active")]
    assert shown == ["last active:   2020-05-17 12:00:00"]
    assert json.loads(run("show", "old", "--json").stdout)["last_active"].startswith(
        "2020-05-17T12:00:00")
    assert "2020-05-17 12:00:00" in run("sessions").output


def test_events_has_a_header_and_type_and_since_filters(run: Any) -> None:
    session_id = run("new").stdout.strip()
    run("mode", session_id, "power")
    plain = run("events").output.splitlines()
    assert plain[0].split() == ["pos", "recorded", "(UTC)", "session", "ver", "event"]
    only = run("events", "--type", "mode_switched", "--json").stdout.splitlines()
    assert [json.loads(line)["event"]["type"] for line in only] == ["mode_switched"]
    assert run("events", "--since", "2000-01-01", "--json").stdout.count("\n") == 2
    assert run("events", "--since", "2999-01-01", "--json").stdout == ""


def test_durations_read_like_2m20s() -> None:
    assert format_duration(140) == "2m20s"
    assert format_duration(45) == "45s"
    assert format_duration(3 * 3600 + 300) == "3h05m"
    assert format_duration(2 * 86400 + 4 * 3600) == "2d04h"


def test_expire_prints_durations_in_units(run: Any) -> None:
    run("new")
    assert "idle for 0s or more" in run("expire", "--idle", "0").output


def test_wide_text_keeps_columns_aligned() -> None:
    assert display_width("梁-研究") == 7
    lines = table(("study", "n"), [("梁-研究", 1), ("abc", 22)]).splitlines()
    assert display_width(lines[2]) == display_width(lines[3]) == display_width(lines[0])


def test_the_ledger_option_is_accepted_after_the_command(run: Any) -> None:
    session_id = run("new").stdout.strip()
    result = run("show", session_id, ledger_first=False)
    assert result.exit_code == 0 and session_id in result.output


def test_the_command_list_never_cuts_a_help_text_short() -> None:
    for width in (80, 200):
        output = CliRunner().invoke(main, ["-h"], terminal_width=width).output
        output = output.split("Commands:")[1]
        assert "..." not in output
        for name, command in main.commands.items():
            first_line = (command.help or "").strip().splitlines()[0]
            assert first_line in " ".join(output.split()), (width, name)


def test_a_usage_error_is_one_line(run: Any) -> None:
    for args in (["bogus"], ["sessions", "--status", "nope"], ["show"], ["import", "a\x00b"]):
        result = run(*args)
        assert result.exit_code == 2
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert result.output.startswith("Error: ")


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_dry_or_refused_import_creates_no_ledger(tmp_path: Path, dry_run: bool) -> None:
    source = tmp_path / "source"
    with EventLog(source) as log:
        log.append("s", [SessionCreated()], 0)
    export = CliRunner().invoke(main, ["--ledger", str(source), "export"]).stdout
    if not dry_run:  # an edited record line (after the header): refused
        header, record = export.splitlines()
        line = json.loads(record)
        line["event"]["mode"] = "power"
        export = header + "\n" + json.dumps(line) + "\n"
    file = tmp_path / "export.jsonl"
    file.write_text(export)
    target = tmp_path / "target"
    args = ["--ledger", str(target), "import", str(file)] + (["--dry-run"] if dry_run else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == (0 if dry_run else 1), result.output
    assert not (target / "data.mdb").exists()


def test_sweep_is_read_your_own_writes(ledger_path: Path) -> None:
    with Ledger(str(ledger_path), agent_command=STANDIN, expiry_age=0.01) as ledger:
        session_id = ledger.create_session().session_id
        ledger.switch_mode(session_id, "power")  # live actor
        assert ledger.sweep(now=time.time() + 60)["expired"] == 1
        info = ledger.info(session_id)
        assert info is not None and info.status == "expired"
