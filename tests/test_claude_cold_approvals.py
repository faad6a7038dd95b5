"""Tool approvals on a COLD run of the real `claude` (one process per turn) against the fake
Messages API: with `tool_approvals` in user mode the turn runs with `--input-format
stream-json --permission-prompt-tool stdio`, claude asks `can_use_tool` for the Bash call
outside the allow-list, and what the caller decides is what claude does."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from claude_harness import CLEARED_VARIABLES, ClaudeHarness, require_claude
from fake_anthropic import FakeAnthropic, text, tool_use

from chatledger.actors.updates import PermissionRequestUpdate
from chatledger.events import PermissionDecided, PermissionRequested, ResponseReceived, RunStarted
from chatledger.ledger import Ledger

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def claude_binary() -> str:
    return require_claude(pytest.skip, pytest.fail)


@pytest.fixture
def claude(claude_binary: str, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[ClaudeHarness]:
    for name in CLEARED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with FakeAnthropic(lifetime=120) as fake:
        harness = ClaudeHarness(claude_binary, fake, tmp_path / "claude")
        yield harness
        harness.kill_leftovers()


def events(ledger: Ledger, session_id: str, kind: type) -> list[Any]:
    return [r.event for r in ledger.events(session_id) if isinstance(r.event, kind)]


@pytest.mark.parametrize("allow", [True, False], ids=["allowed", "denied"])
def test_a_cold_claude_run_puts_a_tool_call_to_the_caller(claude: ClaudeHarness, tmp_path: Path,
                                                          allow: bool) -> None:
    marker = claude.workdir / "touched"
    command = {"command": f"touch {marker}", "description": "touch a file"}
    config = claude.config(tmp_path / "ledger", tool_approvals=True, allowed_tools=("Read",))
    with Ledger(config=config) as ledger:
        session_id = ledger.create_session().session_id
        claude.fake.script(tool_use("Bash", command), text("Finished."))
        asked: list[PermissionRequestUpdate] = []

        def on_update(update: Any) -> None:
            if isinstance(update, PermissionRequestUpdate):
                asked.append(update)
                threading.Thread(target=ledger.decide_permission, args=(
                    session_id, update.request_id, allow),
                    kwargs={"message": None if allow else "no touching",
                            "decided_by": "tester"}).start()

        outcome = ledger.send(session_id, "touch it", on_update=on_update)
        assert outcome.ok, outcome
        assert [a.tool for a in asked] == ["Bash"]
        assert asked[0].input["command"] == command["command"]
        [run] = events(ledger, session_id, RunStarted)
        assert "--permission-prompt-tool" in run.argv and "--input-format" in run.argv
        assert [r.tool for r in events(ledger, session_id, PermissionRequested)] == ["Bash"]
        assert [(d.allow, d.decided_by) for d in events(ledger, session_id,
                                                         PermissionDecided)] == [(allow, "tester")]
        [answer] = events(ledger, session_id, ResponseReceived)
        [call] = outcome.tool_calls
    assert marker.exists() is allow
    if allow:
        assert not call.get("is_error") and answer.permission_denials == ()
    else:
        assert call.get("is_error") is True and "no touching" in str(call.get("output"))
        assert [d.get("tool_name") for d in answer.permission_denials] == ["Bash"]
