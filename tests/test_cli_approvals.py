"""`chatledger send` answers the agent's tool requests: y/N on a terminal, denied when not
interactive unless --approve says otherwise, each decision recorded with who made it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from chatledger import cli_live
from chatledger.cli import main
from chatledger.events import PermissionDecided, PermissionRequested
from chatledger.storage import open_store

STANDIN = f"{sys.executable} -m chatledger.testing.standin"
ENV = {"CHATLEDGER_AGENT_COMMAND": STANDIN, "CHATLEDGER_TIMEOUT": "60",
       "CHATLEDGER_ALLOWED_TOOLS": "Read"}


@pytest.fixture
def run(ledger_path: Path) -> Any:
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, **env: str) -> Result:
        return runner.invoke(main, ["--ledger", str(ledger_path), *args], input=input,
                             env={**ENV, **env}, catch_exceptions=False)

    return invoke


@pytest.fixture
def session(run: Any) -> str:
    return str(json.loads(run("new", "--json").stdout)["session_id"])


def decisions(ledger_path: Path, session_id: str) -> list[PermissionDecided]:
    with open_store(str(ledger_path)) as log:
        return [r.event for r in log.read_session(session_id)
                if isinstance(r.event, PermissionDecided)]


def on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_live, "stdin_is_terminal", lambda: True)


def test_on_a_terminal_send_asks_and_a_yes_allows(run: Any, session: str, ledger_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    on_a_terminal(monkeypatch)
    result = run("send", session, "[[write notes.md]]", input="y\n",
                 CHATLEDGER_TOOL_APPROVALS="yes")
    assert result.exit_code == 0, result.output
    assert "Allow Write with {\"file_path\":" in result.stderr
    assert "[y/N]" in result.stderr
    assert "I wrote" in result.stdout
    decided = decisions(ledger_path, session)
    assert [(d.allow, d.decided_by) for d in decided] == [(True, cli_live.cli_user())]
    assert cli_live.cli_user().startswith("cli:")


def test_on_a_terminal_no_or_just_enter_denies(run: Any, session: str, ledger_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    on_a_terminal(monkeypatch)
    result = run("send", session, "[[write notes.md]]", input="\n",
                 CHATLEDGER_TOOL_APPROVALS="yes")
    assert result.exit_code == 0, result.output
    assert "I could not write" in result.output
    decided = decisions(ledger_path, session)
    assert [(d.allow, d.message) for d in decided] == [(False, "denied at the terminal")]


def test_without_a_terminal_requests_are_denied(run: Any, session: str,
                                                ledger_path: Path) -> None:
    result = run("send", session, "[[write notes.md]]", CHATLEDGER_TOOL_APPROVALS="yes")
    assert result.exit_code == 0, result.output
    assert "Allow" not in result.stderr
    assert "not run on a terminal (--approve allows)" in result.stderr
    decided = decisions(ledger_path, session)
    assert [d.allow for d in decided] == [False]
    assert decided[0].decided_by == cli_live.cli_user()


def test_approve_allows_without_a_terminal_and_turns_approvals_on(
        run: Any, session: str, ledger_path: Path) -> None:
    result = run("send", session, "[[write notes.md]]", "--approve")
    assert result.exit_code == 0, result.output
    assert "I wrote" in result.stdout and "allowed (--approve)" in result.stderr
    assert [d.allow for d in decisions(ledger_path, session)] == [True]


def test_deny_denies_even_on_a_terminal(run: Any, session: str, ledger_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    on_a_terminal(monkeypatch)
    result = run("send", session, "[[write notes.md]]", "--deny")
    assert result.exit_code == 0, result.output
    assert "Allow" not in result.stderr and "I could not write" in result.stdout
    assert [(d.allow, d.message) for d in decisions(ledger_path, session)] == [
        (False, "denied by `chatledger send --deny`")]


def test_approve_and_deny_together_is_a_usage_error(run: Any, session: str) -> None:
    assert run("send", session, "hi", "--approve", "--deny").exit_code == 2


def test_without_approvals_nothing_is_asked(run: Any, session: str, ledger_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    on_a_terminal(monkeypatch)
    result = run("send", session, "[[write notes.md]]")
    assert result.exit_code == 0 and "Allow" not in result.stderr
    with open_store(str(ledger_path)) as log:
        assert not [r for r in log.read_session(session)
                    if isinstance(r.event, PermissionRequested)]


def test_send_as_a_process_with_a_pipe_for_stdin_denies_unless_approve(
        ledger_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CHATLEDGER_")}, **ENV,
           "CHATLEDGER_TOOL_APPROVALS": "yes"}

    def chatledger(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "chatledger", "--ledger",
                               str(ledger_path), *args], input="", capture_output=True,
                              text=True, timeout=120, env=env)

    session = json.loads(chatledger("new", "--json").stdout)["session_id"]
    denied = chatledger("send", session, "[[write a.md]]")
    assert denied.returncode == 0, denied.stderr
    assert "I could not write" in denied.stdout
    allowed = chatledger("send", session, "[[write b.md]]", "--approve", "--json")
    assert allowed.returncode == 0, allowed.stderr
    kinds = [json.loads(line)["type"] for line in allowed.stdout.splitlines()]
    assert "permission_request" in kinds and kinds[-1] == "done"
    assert [d.allow for d in decisions(ledger_path, session)] == [False, True]


def test_ctrl_c_at_the_question_denies_and_exits_130(run: Any, session: str, ledger_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    on_a_terminal(monkeypatch)
    result = run("send", session, "[[write notes.md]]", input="",  # EOF: click's Abort
                 CHATLEDGER_TOOL_APPROVALS="yes")
    assert result.exit_code == 130, result.output
    decided = decisions(ledger_path, session)
    assert [(d.allow, d.message) for d in decided] == [(False, "interrupted at the question")]
    with open_store(str(ledger_path)) as log:
        info = log.require_info(session)
    assert info.open_turn is None  # the turn was closed (cancelled), not left running
