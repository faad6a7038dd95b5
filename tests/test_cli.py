"""The admin CLI through click's CliRunner: every command, its JSON, its errors and exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from testkit import STANDIN_COMMAND_LINE

from chatledger.cli import EXIT_CODES, main
from chatledger.events import MessageSent, SessionCreated
from chatledger.storage import EventLog


@pytest.fixture
def run(ledger_path: Path) -> Any:
    """Invoke `chatledger --ledger <tmp> ...` in process with the stand-in agent."""
    runner = CliRunner()

    def invoke(*args: str, input: str | bytes | None = None) -> Result:
        return runner.invoke(
            main,
            ["--ledger", str(ledger_path), *args],
            input=input,
            env={"CHATLEDGER_AGENT_COMMAND": STANDIN_COMMAND_LINE, "CHATLEDGER_TIMEOUT": "60"},
            catch_exceptions=False,
        )

    return invoke


@pytest.fixture
def session(run: Any) -> str:
    """A session with two turns (one with a canvas change) and a mode switch."""
    session_id = json.loads(run("new", "--study", "beam-1", "--json").stdout)["session_id"]
    assert run("send", session_id, "hello there [[echo]]").exit_code == 0
    assert run("send", session_id, "change the canvas [[canvas]]").exit_code == 0
    assert run("mode", session_id, "power").exit_code == 0
    return session_id


def test_every_command_has_help_text_with_an_example() -> None:
    runner = CliRunner()
    assert main.help and "Exit codes" in main.help
    for name, command in main.commands.items():
        assert command.help, f"{name} has no help text"
        assert "Example:" in command.help, f"{name}'s help has no example"
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Usage: main" in result.output or "Usage:" in result.output


def test_every_exit_code_in_the_group_help_is_documented() -> None:
    assert main.help is not None
    for code in EXIT_CODES:
        assert f"  {code}  " in main.help


def test_new_prints_the_id_and_json_gives_an_object(run: Any, ledger_path: Path) -> None:
    plain = run("new")
    assert plain.exit_code == 0
    session_id = plain.stdout.strip()
    as_json = json.loads(run("new", "--mode", "power", "--json").stdout)
    with EventLog(ledger_path) as log:
        assert log.require_info(session_id).mode == "user"
        assert log.require_info(as_json["session_id"]).mode == "power"


def test_send_streams_the_answer_and_records_the_turn(run: Any, ledger_path: Path) -> None:
    session_id = run("new").stdout.strip()
    result = run("send", session_id, "hello there [[echo]]")
    assert result.exit_code == 0
    assert "echo: hello there" in result.stdout
    history = json.loads(run("history", session_id, "--json").stdout)
    assert [message["role"] for message in history] == ["user", "assistant"]
    assert history[1]["content"] == "echo: hello there"


def test_send_with_a_canvas_file_sends_it_and_shows_modifications(
    run: Any, tmp_path: Path
) -> None:
    session_id = run("new").stdout.strip()
    canvas = tmp_path / "canvas.json"
    canvas.write_text(json.dumps({"nodes": [{"id": "n1"}]}))
    result = run("send", session_id, "add a node [[canvas]]", "--canvas", str(canvas))
    assert result.exit_code == 0
    assert "[canvas]" in result.stderr
    history = json.loads(run("history", session_id, "--json").stdout)
    assert history[0]["canvas_state"] == {"nodes": [{"id": "n1"}]}
    assert len(history[1]["canvas_modifications"]) == 2


def test_send_json_streams_one_update_per_line_ending_with_done(run: Any) -> None:
    session_id = run("new").stdout.strip()
    result = run("send", session_id, "read it [[tool]]", "--json")
    updates = [json.loads(line) for line in result.stdout.splitlines()]
    assert updates[-1]["type"] == "done"
    assert updates[-1]["tool_calls"][0]["name"] == "Read"
    assert any(update["type"] == "text" for update in updates)


def test_a_failed_turn_exits_1_with_the_reason_and_is_recorded(run: Any) -> None:
    session_id = run("new").stdout.strip()
    result = run("send", session_id, "break [[fail]]")
    assert result.exit_code == 1
    assert "the turn failed (exit_status)" in result.stderr
    info = json.loads(run("show", session_id, "--json").stdout)
    assert info["failure_count"] == 1


def test_a_canvas_file_that_is_not_json_is_a_usage_error(run: Any, tmp_path: Path) -> None:
    session_id = run("new").stdout.strip()
    bad = tmp_path / "canvas.json"
    bad.write_text("{not json")
    result = run("send", session_id, "hi", "--canvas", str(bad))
    assert result.exit_code == 2
    assert "--canvas" in result.stderr


def test_unknown_sessions_exit_3_with_one_line(run: Any, session: str) -> None:
    for command in (["show", "nope"], ["history", "nope"], ["send", "nope", "hi"],
                    ["mode", "nope", "user"], ["replay", "nope", "--at", "1"],
                    ["verify", "nope"], ["export", "nope"], ["events", "nope"]):
        result = run(*command)
        assert result.exit_code == 3, command
        assert result.stderr.strip().splitlines() == ["Error: Session not found: nope"], command


def test_bad_modes_and_path_like_ids_are_usage_errors(run: Any, session: str) -> None:
    assert run("mode", session, "root").exit_code == 2
    result = run("show", "../etc")
    assert result.exit_code == 2
    assert "looks like a path" in result.stderr
    assert "Traceback" not in result.output


def test_reading_a_ledger_that_does_not_exist_exits_4(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--ledger", str(tmp_path / "none"), "sessions"])
    assert result.exit_code == 4
    assert "there is no ledger" in result.stderr
    assert not (tmp_path / "none").exists()


def test_a_garbage_ledger_file_exits_4_without_a_traceback(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (ledger / "data.mdb").write_bytes(b"garbage" * 1000)
    result = CliRunner().invoke(main, ["--ledger", str(ledger), "verify"])
    assert result.exit_code == 4
    assert "Traceback" not in result.output


def test_mode_and_study_change_the_session(run: Any, session: str) -> None:
    assert json.loads(run("show", session, "--json").stdout)["mode"] == "power"
    assert run("study", session, "beam-2").exit_code == 0
    assert json.loads(run("show", session, "--json").stdout)["study_id"] == "beam-2"


def test_sessions_filters_and_sorts_newest_activity_first(run: Any) -> None:
    first = run("new", "--study", "a").stdout.strip()
    second = run("new", "--study", "b", "--mode", "power").stdout.strip()
    run("send", first, "wake up [[echo]]")
    listed = json.loads(run("sessions", "--json").stdout)
    assert [info["session_id"] for info in listed] == [first, second]
    assert [i["session_id"] for i in json.loads(run("sessions", "--mode", "power", "--json").stdout)] == [second]
    assert [i["session_id"] for i in json.loads(run("sessions", "--study", "a", "--json").stdout)] == [first]
    assert json.loads(run("sessions", "--status", "expired", "--json").stdout) == []
    assert len(json.loads(run("sessions", "--since", "1h", "--json").stdout)) == 2
    assert json.loads(run("sessions", "--since", "2999-01-01", "--json").stdout) == []
    assert run("sessions", "--since", "soon").exit_code == 2
    table = run("sessions").stdout.splitlines()
    assert table[0].split()[:4] == ["session", "mode", "study", "status"]
    assert first in table[2]


def test_show_and_history_read_like_a_transcript(run: Any, session: str) -> None:
    shown = run("show", session).stdout
    assert "mode:" in shown and "power" in shown and "beam-1" in shown
    history = run("history", session).stdout
    assert "hello there" in history and "echo: hello there" in history
    assert "canvas:" in history


def test_events_prints_the_log_and_one_json_object_per_line(run: Any, session: str) -> None:
    lines = run("events", session, "--json").stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [record["version"] for record in records] == list(range(1, len(records) + 1))
    assert records[0]["event"]["type"] == "session_created"
    assert records[-1]["event"] == {"type": "mode_switched", "from_mode": "user", "to_mode": "power"}
    assert len(run("events", "--limit", "2", "--json").stdout.splitlines()) == 2
    assert "session_created" in run("events").stdout


def test_replay_shows_the_session_as_it_was(run: Any, session: str) -> None:
    early = json.loads(run("replay", session, "--at", "1", "--json").stdout)
    assert early["info"]["version"] == 1 and early["history"] == []
    before_switch = json.loads(run("events", session, "--json").stdout.splitlines()[-2])
    replayed = json.loads(run("replay", session, "--at", str(before_switch["version"]), "--json").stdout)
    assert replayed["info"]["mode"] == "user"
    assert len(replayed["history"]) == 4
    assert run("replay", session, "--at", "999").exit_code == 2


def test_verify_is_clean_and_prints_a_head_that_can_be_checked_later(
    run: Any, session: str
) -> None:
    result = run("verify")
    assert result.exit_code == 0
    head = result.stdout.strip().splitlines()[-1].rsplit(" ", 1)[-1]
    assert run("verify", "--head", head).exit_code == 0
    assert run("verify", session).exit_code == 0
    report = json.loads(run("verify", "--json").stdout)
    assert report["ok"] is True and report["head"] == head
    assert run("verify", "--head", "12:zz").exit_code == 2


def test_verify_catches_truncation_against_a_saved_head(run: Any, session: str) -> None:
    position, digest = run("verify", "--json").stdout and json.loads(
        run("verify", "--json").stdout
    )["head"].split(":")
    future_head = f"{int(position) + 5}:{digest}"
    result = run("verify", "--head", future_head)
    assert result.exit_code == 1
    assert "truncated" in result.stderr


def test_verify_reports_a_flipped_byte_with_its_position(
    run: Any, session: str, ledger_path: Path
) -> None:
    data = bytearray((ledger_path / "data.mdb").read_bytes())
    needle = b"hello there [[echo]]"
    index = data.find(needle)
    assert index > 0
    while index >= 0:  # every copy: LMDB's free pages may still hold an older one
        data[index] ^= 0x01
        index = data.find(needle, index + 1)
    (ledger_path / "data.mdb").write_bytes(bytes(data))
    result = run("verify")
    assert result.exit_code == 1
    assert "first bad position 2" in result.stderr
    assert run("verify", session).exit_code == 1


def test_rebuild_recomputes_the_index(run: Any, session: str) -> None:
    result = run("rebuild", "--json")
    assert json.loads(result.stdout) == {"sessions": 1}
    assert run("verify").exit_code == 0


def test_compact_writes_a_verifiable_copy(run: Any, session: str, tmp_path: Path) -> None:
    copy = tmp_path / "compact"
    result = run("compact", "-o", str(copy), "--json")
    assert result.exit_code == 0
    sizes = json.loads(result.stdout)
    assert sizes["bytes_after"] <= sizes["bytes_before"]
    verified = CliRunner().invoke(main, ["--ledger", str(copy), "verify", "--json"])
    original = json.loads(run("verify", "--json").stdout)
    assert json.loads(verified.stdout)["records_checked"] == original["records_checked"]
    assert json.loads(verified.stdout)["head"] == original["head"]
    assert run("compact", "-o", str(copy)).exit_code == 4  # not empty any more


def test_export_then_import_reproduces_the_ledger_exactly(
    run: Any, session: str, tmp_path: Path
) -> None:
    exported = tmp_path / "export.jsonl"
    assert run("export", "-o", str(exported)).exit_code == 0
    other = tmp_path / "other"
    imported = CliRunner().invoke(main, ["--ledger", str(other), "import", str(exported), "--json"])
    records = len(exported.read_text().splitlines()) - 1  # the first line is the header
    assert json.loads(imported.stdout)["events_imported"] == records
    again = CliRunner().invoke(main, ["--ledger", str(other), "import", str(exported), "--json"])
    report = json.loads(again.stdout)
    assert report["events_imported"] == 0 and report["events_already_present"] > 0
    original = run("events", "--json").stdout
    copied = CliRunner().invoke(main, ["--ledger", str(other), "events", "--json"]).stdout
    assert copied == original  # same positions, times, events: and so the same hashes
    assert (json.loads(run("verify", "--json").stdout)["head"]
            == json.loads(CliRunner().invoke(main, ["--ledger", str(other), "verify", "--json"]).stdout)["head"])


def test_import_appends_only_what_is_missing(run: Any, session: str, tmp_path: Path) -> None:
    partial = tmp_path / "partial.jsonl"
    full = tmp_path / "full.jsonl"
    run("export", "-o", str(partial))
    run("send", session, "one more [[echo]]")
    run("export", "-o", str(full))
    other = tmp_path / "other"
    CliRunner().invoke(main, ["--ledger", str(other), "import", str(partial)])
    result = CliRunner().invoke(main, ["--ledger", str(other), "import", str(full), "--json"])
    report = json.loads(result.stdout)
    assert report["events_already_present"] == len(partial.read_text().splitlines()) - 1
    assert report["events_imported"] == 3  # message, run started, response


def test_an_edited_export_is_rejected_and_nothing_is_imported(
    run: Any, session: str, tmp_path: Path
) -> None:
    second = run("new").stdout.strip()
    run("send", second, "other [[echo]]")
    exported = tmp_path / "export.jsonl"
    run("export", "-o", str(exported))
    lines = exported.read_text().splitlines()
    edited = json.loads(lines[-1])
    edited["event"]["text"] = "something the agent never said"
    lines[-1] = json.dumps(edited)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    other = tmp_path / "other"
    result = CliRunner().invoke(main, ["--ledger", str(other), "import", str(tampered)])
    assert result.exit_code == 1
    assert "was edited" in result.stderr
    with EventLog(other) as log:
        assert log.head().position == 0  # atomic: the earlier, valid lines are not in


def test_an_export_with_a_missing_record_breaks_the_chain_and_is_rejected(
    run: Any, session: str, tmp_path: Path
) -> None:
    exported = tmp_path / "export.jsonl"
    run("export", "-o", str(exported))
    lines = exported.read_text().splitlines()
    del lines[3]
    holed = tmp_path / "holed.jsonl"
    holed.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["--ledger", str(tmp_path / "other"), "import", str(holed)])
    assert result.exit_code == 1
    assert "jumps to version" in result.stderr


def test_import_refuses_to_mix_a_different_history_under_one_id(
    run: Any, session: str, tmp_path: Path
) -> None:
    exported = tmp_path / "export.jsonl"
    run("export", "-o", str(exported))
    other = tmp_path / "other"
    with EventLog(other) as log:
        log.append(session, [SessionCreated(mode="power"), MessageSent(turn=1, text="x")], 0)
    result = CliRunner().invoke(main, ["--ledger", str(other), "import", str(exported)])
    assert result.exit_code == 1
    assert "different version 1" in result.stderr


def test_html_export_is_self_contained_and_escapes_everything(
    run: Any, tmp_path: Path
) -> None:
    session_id = run("new", "--study", "<b>study</b>").stdout.strip()
    run("send", session_id, "<script>alert('user')</script> [[echo]]")
    run("send", session_id, "add it [[canvas]]")
    page_file = tmp_path / "t.html"
    assert run("export", session_id, "--format", "html", "-o", str(page_file)).exit_code == 0
    page = page_file.read_text()
    assert page.startswith("<!doctype html>")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;user&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;study&lt;/b&gt;" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page
    assert "canvas modified" in page and "mcp__atomizer-tools__apply_canvas_change" in page


def test_expire_dry_run_changes_nothing_and_expire_records_it(run: Any, session: str) -> None:
    dry = json.loads(run("expire", "--idle", "0s", "--dry-run", "--json").stdout)
    assert [item["session_id"] for item in dry["expired"]] == [session]
    assert json.loads(run("show", session, "--json").stdout)["status"] == "idle"
    assert json.loads(run("expire", "--idle", "1d", "--json").stdout)["expired"] == []
    run("expire", "--idle", "0")
    assert json.loads(run("show", session, "--json").stdout)["status"] == "expired"
    assert run("expire", "--idle", "forever").exit_code == 2


def test_stats_counts_sessions_turns_failures_and_cost(run: Any, session: str) -> None:
    run("send", session, "break [[fail]]")
    figures = json.loads(run("stats", "--json").stdout)
    assert figures["sessions"] == 1
    assert figures["turns"] == 3
    assert figures["failures_by_reason"] == {"exit_status": 1}
    assert figures["total_cost_usd"] > 0
    assert figures["size_on_disk_bytes"] > 0
    assert "failures:" in run("stats").stdout


def test_demo_runs_offline_and_verifies(ledger_path: Path) -> None:
    result = CliRunner().invoke(main, ["--ledger", str(ledger_path), "demo"])
    assert result.exit_code == 0, result.output
    for heading in ("== transcript ==", "== event timeline ==", "== verify =="):
        assert heading in result.stdout
    assert "canvas_modified" in result.stdout and "mode_switched" in result.stdout
    assert "ok: 16 records" in result.stdout


def test_demo_without_a_ledger_uses_and_removes_a_temporary_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CHATLEDGER_PATH", raising=False)
    result = CliRunner().invoke(main, ["demo", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["verify"]["ok"] is True
    assert any(call["name"] == "Read" for message in document["history"] for call in message["tool_calls"])
    assert not Path(document["ledger"]).exists()


def test_progress_bars_stay_quiet_when_piped(run: Any, session: str) -> None:
    result = run("verify")
    assert "verifying" not in result.output


def test_progress_bars_show_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from chatledger.console import progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress("verifying", 10) as advance:
        advance(10)
    assert "verifying" in terminal.getvalue()


def test_click_usage_errors_keep_click_exit_code_2() -> None:
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2
    assert isinstance(click.UsageError("x").exit_code, int)
