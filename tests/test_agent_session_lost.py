"""A resumed agent session the agent no longer has: the dialect says so, the session records
AgentSessionLost and runs the turn again with prompt history (stand-in agent, real ledger)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from chatledger.events import AgentSessionLost, ResponseReceived, RunFailed, RunStarted
from chatledger.ledger import Ledger

STANDIN = (sys.executable, "-m", "chatledger.testing.standin")


def test_a_lost_agent_session_is_recorded_and_the_turn_runs_again_with_prompt_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    remembered = tmp_path / "standin-sessions"
    monkeypatch.setenv("CHATLEDGER_STANDIN_SESSIONS", str(remembered))
    with Ledger(str(tmp_path / "ledger"), agent_command=STANDIN, history_strategy="resume",
                timeout=30, kill_grace=0.5) as ledger:
        session_id = ledger.create_session().session_id
        assert ledger.send(session_id, "my number is 42").ok
        shutil.rmtree(remembered)  # the agent forgets every session it had
        outcome = ledger.send(session_id, "[[prompt]] what was my number?")
        assert outcome.ok, outcome.error
        events = [record.event for record in ledger.events(session_id)]
    lost = [event for event in events if isinstance(event, AgentSessionLost)]
    assert len(lost) == 1 and "No conversation found with session ID" in lost[0].message
    runs = [event for event in events if isinstance(event, RunStarted)]
    assert [(run.turn, run.attempt, run.history_strategy) for run in runs] == [
        (1, 1, "prompt"), (2, 1, "resume"), (2, 2, "prompt")]
    assert not any(isinstance(event, RunFailed) for event in events)
    answer = [event for event in events if isinstance(event, ResponseReceived)][-1]
    assert "my number is 42" in answer.text  # the retry's prompt carried the history
