"""Spend caps per session and per owner, in USD and tokens: refused before a turn starts (a
yielded error and a recorded TurnRefused), raised to go on, across a restart and with another
process setting them; spend per owner and per day in `stats`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from testkit import STANDIN, STANDIN_COMMAND_LINE, open_ledger

from chatledger import SessionManager
from chatledger.cli import main
from chatledger.errors import InvalidCommandError
from chatledger.events import MessageSent, Recorded, ResponseReceived, SessionCreated, TurnRefused
from chatledger.events.projections import usage_tokens
from chatledger.ledger import Ledger
from chatledger.spend import owner_budget_stream, spend_report


@pytest.fixture
def ledger(store_location: str) -> Any:
    """A ledger over each store in turn."""
    with open_ledger(store_location) as opened:
        yield opened


def test_a_session_over_its_usd_cap_is_refused_until_the_cap_is_raised(ledger: Ledger) -> None:
    session_id = ledger.create_session().session_id
    assert ledger.send(session_id, "first turn").ok
    spent = ledger.info(session_id).total_cost_usd  # type: ignore[union-attr]
    assert spent > 0
    ledger.set_budget(session_id, usd=spent)
    refused = ledger.send(session_id, "second turn")
    assert not refused.ok and refused.reason == "budget_exceeded"
    assert refused.error is not None and "budget exceeded" in refused.error
    assert "raise the cap" in refused.error
    events = [recorded.event for recorded in ledger.events(session_id)]
    assert isinstance(events[-1], TurnRefused) and events[-1].scope == "session"
    assert [e.text for e in events if isinstance(e, MessageSent)] == ["first turn"]
    info = ledger.set_budget(session_id, usd=spent * 10)
    assert info.refused_count == 1
    assert ledger.send(session_id, "third turn").ok
    assert ledger.info(session_id).turn_count == 2  # type: ignore[union-attr]


def test_a_token_cap_counts_cache_tokens(ledger: Ledger) -> None:
    assert usage_tokens({"input_tokens": 3, "output_tokens": 4,
                         "cache_creation_input_tokens": 5, "cache_read_input_tokens": 6,
                         "service_tier": "standard"}) == 18
    session_id = ledger.create_session().session_id
    ledger.set_budget(session_id, tokens=1)
    assert ledger.send(session_id, "one").ok  # nothing spent yet: it starts
    tokens = ledger.info(session_id).total_tokens  # type: ignore[union-attr]
    assert tokens > 1
    assert ledger.send(session_id, "two").reason == "budget_exceeded"


def test_an_owner_cap_covers_all_the_owners_sessions(ledger: Ledger) -> None:
    first = ledger.create_session(owner="alice").session_id
    second = ledger.create_session(owner="alice").session_id
    other = ledger.create_session(owner="bob").session_id
    assert ledger.send(first, "spend something").ok
    budget = ledger.set_owner_budget("alice", usd=0.000001)
    assert budget.spent_usd > budget.usd  # type: ignore[operator]
    refused = ledger.send(second, "a new session of the same owner")
    assert refused.reason == "budget_exceeded" and "owner 'alice'" in (refused.error or "")
    assert ledger.send(other, "bob is not capped").ok
    refusal = ledger.events(second)[-1].event
    assert isinstance(refusal, TurnRefused) and refusal.scope == "owner"
    ledger.set_owner_budget("alice", usd=None)
    assert ledger.send(second, "now it goes on").ok
    assert ledger.list_sessions(limit=50).sessions  # the budget stream is never listed
    assert all(not info.session_id.startswith("~") for info in
               ledger.list_sessions(archived=None, limit=50).sessions)
    with pytest.raises(InvalidCommandError):
        ledger.set_owner_budget("alice", usd=-1)


def test_the_manager_yields_the_refusal_as_an_error(store_location: str) -> None:
    async def scenario() -> None:
        manager = SessionManager(path=store_location, agent_command=STANDIN)
        try:
            session = await manager.create_session(owner="carol")
            await manager.set_budget(session.session_id, usd=0)
            items = [item async for item in manager.send_message(session.session_id, "hi")]
            assert [item["type"] for item in items] == ["error", "done"]
            assert "budget exceeded" in items[0]["message"]
            await manager.set_owner_budget("carol", tokens=10**9)
            assert (await manager.owner_budget("carol")).tokens == 10**9
            await manager.set_budget(session.session_id, usd=None)
            items = [item async for item in manager.send_message(session.session_id, "hi")]
            assert [item["type"] for item in items] == ["text", "done"]
        finally:
            await manager.stop()

    asyncio.run(scenario())


def _cli_env() -> dict[str, str]:
    return {**os.environ, "CHATLEDGER_AGENT_COMMAND": STANDIN_COMMAND_LINE}


def test_caps_set_by_another_process_hold_here_and_survive_a_restart(ledger_path: Path) -> None:
    with open_ledger(ledger_path) as ledger:
        session_id = ledger.create_session(owner="dora").session_id
        assert ledger.send(session_id, "one").ok
        subprocess.run([sys.executable, "-m", "chatledger", "--ledger", str(ledger_path),
                        "budget", "--owner", "dora", "--usd", "0"],
                       capture_output=True, timeout=120, env=_cli_env(), check=True)
        assert ledger.send(session_id, "two").reason == "budget_exceeded"
        subprocess.run([sys.executable, "-m", "chatledger", "--ledger", str(ledger_path),
                        "budget", session_id, "--tokens", "5"],
                       capture_output=True, timeout=120, env=_cli_env(), check=True)
        ledger.set_owner_budget("dora", usd=100)
        assert ledger.send(session_id, "three").reason == "budget_exceeded"  # the token cap
    with open_ledger(ledger_path) as ledger:
        info = ledger.info(session_id)
        assert info is not None and (info.budget_tokens, info.refused_count) == (5, 2)
        assert ledger.owner_budget("dora").usd == 100
        ledger.set_budget(session_id, tokens=None)
        assert ledger.send(session_id, "four").ok


def test_the_cli_sets_and_shows_caps_and_stats_shows_spend(ledger_path: Path) -> None:
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(main, ["--ledger", str(ledger_path), *args], env=_cli_env(),
                             catch_exceptions=False)

    session_id = run("new", "--owner", "erin").stdout.strip()
    assert run("send", session_id, "hello").exit_code == 0
    shown = run("budget", session_id)
    assert shown.exit_code == 0 and "cap none" in shown.stdout
    assert "cap $5.0000" in run("budget", session_id, "--usd", "5").stdout
    both = run("budget", session_id, "--tokens", "100")
    assert "cap $5.0000 and 100 tokens" in both.stdout  # the USD cap was kept
    assert json.loads(run("budget", session_id, "--clear", "--json").stdout)["budget_usd"] is None
    owner = json.loads(run("budget", "--owner", "erin", "--usd", "0", "--json").stdout)
    assert owner["usd"] == 0 and owner["spent_usd"] > 0
    refused = run("send", session_id, "over the cap")
    assert refused.exit_code == 1 and "budget exceeded" in refused.output
    assert run("budget").exit_code == 2
    assert run("budget", session_id, "--owner", "erin").exit_code == 2
    stats = run("stats")
    assert stats.exit_code == 0
    assert "spend per owner" in stats.stdout and "erin" in stats.stdout
    assert datetime.now(timezone.utc).date().isoformat() in stats.stdout
    figures = json.loads(run("stats", "--json").stdout)
    assert figures["spend"]["by_owner"]["erin"]["answers"] == 1
    assert figures["spend"]["by_owner"]["erin"]["refused"] == 1
    assert figures["sessions"] >= 1  # the old keys are all still there


def test_the_spend_report_groups_answers_by_owner_and_day() -> None:
    moment = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)

    def record(position: int, session_id: str, event: Any) -> Recorded:
        return Recorded(position, session_id, position, moment, 1, b"", b"", event)

    report = spend_report([
        record(1, "a", SessionCreated(owner="x")),
        record(2, "a", ResponseReceived(turn=1, text="", cost_usd=0.5,
                                        usage={"input_tokens": 2, "cache_read_input_tokens": 3})),
        record(3, "b", ResponseReceived(turn=1, text="", cost_usd=None)),
    ])
    assert report.by_owner["x"].usd == 0.5 and report.by_owner["x"].tokens == 5
    assert report.by_owner["(none)"].answers == 1
    assert report.by_day["2026-01-02"].answers == 2
    assert owner_budget_stream("x").startswith("~")
