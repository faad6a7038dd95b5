"""Forks with the real `claude` binary against the fake Messages API (which records what claude
sent): with the resume strategy a fork's first turn resumes the parent's agent session with
`--fork-session`, so the request claude makes holds the parent's turns up to the fork's
version; a fork before the parent's last turn sends prompt history instead, and its request
holds the turns up to its version and not the later ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from claude_harness import CLEARED_VARIABLES, ClaudeHarness, require_claude
from fake_anthropic import FakeAnthropic, text

from chatledger.events import ResponseReceived, RunStarted
from chatledger.events.model import ForkedFrom
from chatledger.ledger import Ledger

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def claude_binary() -> str:
    """The real claude binary (installed into the npm cache if need be), else a skip."""
    return require_claude(pytest.skip, pytest.fail)


@pytest.fixture
def claude(claude_binary: str, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[ClaudeHarness]:
    """A scratch HOME and cwd for claude, pointed at a fresh fake API; leftovers killed."""
    for name in CLEARED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with FakeAnthropic(lifetime=120) as fake:
        harness = ClaudeHarness(claude_binary, fake, tmp_path / "claude")
        yield harness
        harness.kill_leftovers()


def runs_of(ledger: Ledger, session_id: str, after: int) -> list[Any]:
    """The session's own runs (after version `after`: a fork's copies left out)."""
    return [r.event for r in ledger.events(session_id)
            if isinstance(r.event, RunStarted) and r.version > after]


def test_a_fork_at_the_last_turn_forks_claude_s_own_session(
    claude: ClaudeHarness, tmp_path: Path,
) -> None:
    claude.fake.script(text("Noted, Ada."), text("Noted, teal."), text("You are Ada; teal."),
                       text("Still Ada."))
    config = claude.config(tmp_path / "ledger", history_strategy="resume")
    with Ledger(config=config) as ledger:
        parent = ledger.create_session().session_id
        assert ledger.send(parent, "My name is Ada.").ok
        assert ledger.send(parent, "My colour is teal.").ok
        parent_agent = ledger.info(parent).agent_session_id  # type: ignore[union-attr]
        fork = ledger.fork(parent, ledger.info(parent).version)  # type: ignore[union-attr]
        outcome = ledger.send(fork.session_id, "Who am I and what do I like?")
        assert outcome.ok, outcome
        assert ledger.send(fork.session_id, "Say it again.").ok
        runs = runs_of(ledger, fork.session_id, fork.version)
        own = [r.event.agent_session_id for r in ledger.events(fork.session_id)
               if isinstance(r.event, ResponseReceived)][-2:]
        assert ledger.verify().ok
    assert runs[0].history_strategy == "fork" and "--fork-session" in runs[0].argv
    assert f"--resume={parent_agent}" in runs[0].argv
    assert own[0] not in (None, parent_agent) and own[1] == own[0]  # claude's new session
    assert f"--resume={own[0]}" in runs[1].argv and "--fork-session" not in runs[1].argv
    first_fork_call = claude.fake.model_calls()[2]
    everything = first_fork_call.all_text()
    assert "My name is Ada." in everything and "My colour is teal." in everything
    assert "Noted, teal." in everything  # claude carried the parent's turns itself
    assert "## Conversation so far" not in first_fork_call.user_texts()[-1]
    second = claude.fake.model_calls()[3].all_text()
    assert "Who am I and what do I like?" in second and "You are Ada; teal." in second


def test_a_fork_before_the_last_turn_sends_claude_only_the_turns_up_to_its_version(
    claude: ClaudeHarness, tmp_path: Path,
) -> None:
    claude.fake.script(text("Noted, Ada."), text("Noted, teal."), text("You are Ada."))
    config = claude.config(tmp_path / "ledger", history_strategy="resume")
    with Ledger(config=config) as ledger:
        parent = ledger.create_session().session_id
        assert ledger.send(parent, "My name is Ada.").ok
        early = ledger.info(parent).version  # type: ignore[union-attr]
        assert ledger.send(parent, "My colour is teal.").ok
        fork = ledger.fork(parent, early)
        forked = ledger.events(fork.session_id)[0].event
        outcome = ledger.send(fork.session_id, "Who am I?")
        runs = runs_of(ledger, fork.session_id, fork.version)
    assert isinstance(forked, ForkedFrom) and forked.agent_session_id is None
    assert outcome.ok and runs[0].history_strategy == "prompt"
    assert not any(word.startswith("--resume") for word in runs[0].argv)
    request = claude.fake.model_calls()[2]
    everything = request.all_text()
    assert "My name is Ada." in everything and "Noted, Ada." in everything
    assert "teal" not in everything  # the parent's later turn stays out
