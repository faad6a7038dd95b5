"""Spend caps per session and per owner, in USD and tokens: refused before a turn starts (a
yielded error and a recorded TurnRefused), raised to go on, across a restart and with another
process setting them; owner caps that count the turns in flight of concurrent sessions (in
one process and across two); costs and tokens per model from `modelUsage`, a warm process's
cumulative figures turned into per-turn ones; spend per owner, per day and per model in
`stats`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from claude_harness import CLEARED_VARIABLES, ClaudeHarness, require_claude
from click.testing import CliRunner
from fake_anthropic import FakeAnthropic, text
from testkit import STANDIN, STANDIN_COMMAND_LINE, open_ledger, wait_until

from chatledger import SessionManager
from chatledger.agent.model_usage import merged_usage, parse_model_usage, usage_since
from chatledger.cli import main
from chatledger.errors import InvalidCommandError
from chatledger.events import (
    AgentProcessStarted,
    MessageSent,
    ModelUsage,
    Recorded,
    ResponseReceived,
    RunFailed,
    RunStarted,
    SessionCreated,
    TurnRefused,
    decode_event,
    encode_event,
)
from chatledger.events.projections import usage_tokens
from chatledger.ledger import Ledger
from chatledger.spend import owner_budget_stream, spend_report
from chatledger.spend.caps import owner_start_lease_id
from chatledger.storage.leases import LeaseOwner
from chatledger.testing.standin import STANDIN_MODEL
from chatledger.testing.standin_agent import CACHE_READ_TOKENS, CACHE_WRITE_TOKENS


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
    assert "spend per model" in stats.stdout and STANDIN_MODEL in stats.stdout
    model = figures["spend"]["by_model"][STANDIN_MODEL]
    assert model["answers"] == 1 and model["usd"] == figures["spend"]["by_owner"]["erin"]["usd"]
    assert (model["cache_creation_input_tokens"], model["cache_read_input_tokens"]) == \
        (CACHE_WRITE_TOKENS, CACHE_READ_TOKENS)


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


def _record(position: int, session_id: str, event: Any) -> Recorded:
    moment = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
    return Recorded(position, session_id, position, moment, 1, b"", b"", event)


def test_the_spend_report_counts_each_model_and_both_kinds_of_cache_tokens() -> None:
    opus = ModelUsage(model="opus", input_tokens=10, output_tokens=20,
                      cache_creation_input_tokens=30, cache_read_input_tokens=40, cost_usd=0.5)
    haiku = ModelUsage(model="haiku", input_tokens=1, output_tokens=2, cost_usd=0.01)
    report = spend_report([
        _record(1, "a", SessionCreated(owner="x")),
        _record(2, "a", ResponseReceived(turn=1, text="", cost_usd=0.51, model_usage=(opus, haiku),
                                         usage={"input_tokens": 11, "output_tokens": 22,
                                                "cache_creation_input_tokens": 30,
                                                "cache_read_input_tokens": 40})),
        _record(3, "a", ResponseReceived(turn=2, text="", cost_usd=0.2,
                                         usage={"input_tokens": 5, "cache_read_input_tokens": 7})),
    ])
    assert report.by_model["opus"].usd == 0.5 and report.by_model["opus"].tokens == 100
    assert report.by_model["opus"].cache_creation_input_tokens == 30
    assert report.by_model["haiku"].answers == 1 and report.by_model["haiku"].output_tokens == 2
    old = report.by_model["(not recorded)"]  # an answer without modelUsage: its whole cost
    assert (old.usd, old.input_tokens, old.cache_read_input_tokens) == (0.2, 5, 7)
    owner = report.by_owner["x"]
    assert owner.usd == pytest.approx(sum(spend.usd for spend in report.by_model.values()))
    assert owner.tokens == sum(spend.tokens for spend in report.by_model.values()) == 115
    assert (owner.cache_creation_input_tokens, owner.cache_read_input_tokens) == (30, 47)


def test_model_usage_is_parsed_from_claudes_result_and_never_raises() -> None:
    parsed = parse_model_usage({
        "claude-sonnet-4-5": {"inputTokens": 12, "outputTokens": 34, "cacheReadInputTokens": 56,
                              "cacheCreationInputTokens": 78, "webSearchRequests": 0,
                              "costUSD": 0.0123, "contextWindow": 200000},
        "claude-haiku": {"inputTokens": "many", "outputTokens": -3, "costUSD": float("nan")},
        "broken": 5,
    })
    assert parsed == (
        ModelUsage(model="claude-haiku"),
        ModelUsage(model="claude-sonnet-4-5", input_tokens=12, output_tokens=34,
                   cache_read_input_tokens=56, cache_creation_input_tokens=78, cost_usd=0.0123))
    assert parse_model_usage(None) == parse_model_usage([1]) == ()


def test_a_warm_processs_cumulative_usage_becomes_the_turns_share() -> None:
    first = (ModelUsage(model="a", input_tokens=10, cache_read_input_tokens=5, cost_usd=0.1),)
    second = (ModelUsage(model="a", input_tokens=25, cache_read_input_tokens=9, cost_usd=0.3),
              ModelUsage(model="b", output_tokens=7, cost_usd=0.05))
    assert usage_since(first, ()) == first  # the first result of a (new) process counts whole
    assert usage_since(second, first) == (
        ModelUsage(model="a", input_tokens=15, cache_read_input_tokens=4, cost_usd=0.2),
        ModelUsage(model="b", output_tokens=7, cost_usd=0.05))
    assert usage_since(first, first) == ()  # nothing new: nothing counted
    assert merged_usage(second, first) == second  # a total never goes back


def test_an_answer_recorded_before_model_usage_decodes_with_the_defaults() -> None:
    old = encode_event(ResponseReceived(turn=1, text="hi", cost_usd=0.5))
    assert b"model_usage" not in old and b"first_token" not in old  # defaults are omitted
    decoded = decode_event(old)
    assert isinstance(decoded, ResponseReceived)
    assert (decoded.model_usage, decoded.process_model_usage, decoded.first_token_seconds) == \
        ((), (), None)
    refused = decode_event(encode_event(TurnRefused(message="over")))
    assert isinstance(refused, TurnRefused) and refused.turns_in_flight == 0


def test_warm_turns_spend_adds_up_per_model_over_several_turns_and_a_respawn(
        ledger_path: Path) -> None:
    with open_ledger(ledger_path, warm_agents=True, max_warm_agents=2) as ledger:
        session_id = ledger.create_session(owner="wes").session_id
        for message in ("one", "two", "three"):
            assert ledger.send(session_id, message).ok
        ledger.switch_mode(session_id, "power")  # a new process, which counts from zero
        for message in ("four", "five"):
            assert ledger.send(session_id, message).ok
        records = ledger.events(session_id)
        info = ledger.info(session_id)
        report = spend_report(ledger.runtime.log.read_all())
    assert info is not None
    assert len([r for r in records if isinstance(r.event, AgentProcessStarted)]) == 2
    answers = [r.event for r in records if isinstance(r.event, ResponseReceived)]
    assert len(answers) == 5
    for answer in answers:  # each turn's own figures, not the process's running total
        (model,) = answer.model_usage
        assert model.model == STANDIN_MODEL
        assert model.cost_usd == pytest.approx(answer.cost_usd)
        assert model.tokens == usage_tokens(answer.usage)
        assert model.cache_read_input_tokens == CACHE_READ_TOKENS
        assert answer.first_token_seconds is not None and answer.first_token_seconds >= 0
    for process in (answers[:3], answers[3:]):  # cumulative per process, from zero each time
        assert process[0].process_model_usage == process[0].model_usage
        (total,) = process[-1].process_model_usage
        assert total.cost_usd == pytest.approx(sum(a.cost_usd for a in process))
        assert total.input_tokens == sum(a.model_usage[0].input_tokens for a in process)
        assert total.cache_read_input_tokens == CACHE_READ_TOKENS * len(process)
        assert total.cost_usd == pytest.approx(process[-1].process_cost_usd)
    spent = sum(a.process_model_usage[0].cost_usd for a in (answers[2], answers[4]))
    assert info.total_cost_usd == pytest.approx(spent)
    assert report.by_model[STANDIN_MODEL].usd == pytest.approx(spent)
    assert report.by_model[STANDIN_MODEL].tokens == info.total_tokens


def _send_in_thread(ledger: Ledger, session_id: str, message: str,
                    results: dict[str, Any]) -> threading.Thread:
    """Send `message` on a thread of its own; its outcome lands in `results[session_id]`."""
    thread = threading.Thread(target=lambda: results.__setitem__(
        session_id, ledger.send(session_id, message)), daemon=True)
    thread.start()
    return thread


def test_concurrent_turns_of_one_owner_cannot_all_pass_a_cap_together(
        store_location: str) -> None:
    # Each turn in flight is reserved $1; the cap $2.5 lets three start (0, 1 and 2 reserved
    # are below it) and refuses the fourth (3 reserved), although nothing is spent yet.
    with open_ledger(store_location, spend_reserve_usd=1.0, max_runs=4) as ledger:
        sessions = [ledger.create_session(owner="zed").session_id for _ in range(4)]
        ledger.set_owner_budget("zed", usd=2.5)
        results: dict[str, Any] = {}
        threads = [_send_in_thread(ledger, session_id, "[[slow 4]] hello", results)
                   for session_id in sessions]
        for thread in threads:
            thread.join(60)
        assert len(results) == 4
        refused = [session for session, outcome in results.items() if not outcome.ok]
        assert len(refused) == 1, results
        assert results[refused[0]].reason == "budget_exceeded"
        assert "3 turn(s) in flight" in (results[refused[0]].error or "")
        refusal = ledger.events(refused[0])[-1].event
        assert isinstance(refusal, TurnRefused) and refusal.scope == "owner"
        assert (refusal.turns_in_flight, refusal.reserved_usd) == (3, 3.0)
        assert refusal.spent_usd < refusal.cap_usd  # type: ignore[operator]
        # Once the turns in flight have ended their reservations are gone: it may go on.
        assert ledger.send(refused[0], "now").ok


def test_a_turn_in_flight_in_another_process_counts_against_the_owner_cap(
        ledger_path: Path) -> None:
    with open_ledger(ledger_path) as ledger:
        running = ledger.create_session(owner="yan").session_id
        waiting = ledger.create_session(owner="yan").session_id
        ledger.set_owner_budget("yan", usd=1.0)
        results: dict[str, Any] = {}
        thread = _send_in_thread(ledger, running, "[[slow 6]] long", results)
        assert wait_until(lambda: ledger.info(running).status == "running", 20)  # type: ignore[union-attr]
        other = subprocess.run(
            [sys.executable, "-m", "chatledger", "--ledger", str(ledger_path), "send", waiting,
             "from another process"], capture_output=True, text=True, timeout=120,
            env={**_cli_env(), "CHATLEDGER_SPEND_RESERVE_USD": "1"})
        assert other.returncode == 1, other.stdout + other.stderr
        assert "budget exceeded" in other.stdout + other.stderr
        assert "1 turn(s) in flight" in other.stdout + other.stderr
        thread.join(60)
        assert results[running].ok
        refusal = ledger.events(waiting)[-1].event
        assert isinstance(refusal, TurnRefused) and refusal.turns_in_flight == 1
    later = subprocess.run(  # the turn has ended: its reservation is released
        [sys.executable, "-m", "chatledger", "--ledger", str(ledger_path), "send", waiting,
         "again"], capture_output=True, text=True, timeout=120,
        env={**_cli_env(), "CHATLEDGER_SPEND_RESERVE_USD": "1"})
    assert later.returncode == 0, later.stdout + later.stderr


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_a_failed_turn_that_still_cost_something_is_spend(ledger_path: Path, warm: bool) -> None:
    with open_ledger(ledger_path, warm_agents=warm) as ledger:
        session_id = ledger.create_session(owner="fay").session_id
        assert ledger.send(session_id, "first").ok
        failed = ledger.send(session_id, "[[error]] overloaded")
        assert (failed.ok, failed.reason) == (False, "agent_error")
        records = ledger.events(session_id)
        (failure,) = [r.event for r in records if isinstance(r.event, RunFailed)]
        (answer,) = [r.event for r in records if isinstance(r.event, ResponseReceived)]
        assert failure.cost_usd is not None and failure.cost_usd > 0
        (model,) = failure.model_usage  # the turn's share, not the process's running total
        assert model.cost_usd == pytest.approx(failure.cost_usd)
        assert model.tokens == usage_tokens(failure.usage)
        info = ledger.info(session_id)
        assert info is not None
        assert info.total_cost_usd == pytest.approx(answer.cost_usd + failure.cost_usd)
        assert info.total_tokens == usage_tokens(answer.usage) + usage_tokens(failure.usage)
        report = spend_report(ledger.runtime.log.read_all())
        assert report.by_owner["fay"].usd == pytest.approx(info.total_cost_usd)
        assert report.by_owner["fay"].answers == 1
        assert report.by_model[STANDIN_MODEL].usd == pytest.approx(info.total_cost_usd)
        ledger.set_budget(session_id, usd=info.total_cost_usd)  # the failure counts
        assert ledger.send(session_id, "over").reason == "budget_exceeded"


@pytest.mark.claude
@pytest.mark.timeout(180)
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_real_claudes_model_usage_is_recorded_per_turn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warm: bool) -> None:
    binary = require_claude(pytest.skip, pytest.fail)
    for name in CLEARED_VARIABLES:  # chatledger passes our environment on to the agent
        monkeypatch.delenv(name, raising=False)
    with FakeAnthropic(lifetime=150) as fake:
        harness = ClaudeHarness(binary, fake, tmp_path / "claude")
        try:
            fake.script(text("one", input_tokens=31, output_tokens=9))
            fake.script(text("two", input_tokens=40, output_tokens=11))
            config = harness.config(tmp_path / "ledger", warm_agents=warm)
            with Ledger(config=config) as ledger:
                session_id = ledger.create_session().session_id
                assert ledger.send(session_id, "hi").ok and ledger.send(session_id, "again").ok
                answers = [r.event for r in ledger.events(session_id)
                           if isinstance(r.event, ResponseReceived)]
        finally:
            harness.kill_leftovers()
    for answer, (tokens_in, tokens_out) in zip(answers, [(31, 9), (40, 11)], strict=True):
        (model,) = answer.model_usage
        assert (model.input_tokens, model.output_tokens) == (tokens_in, tokens_out)
        assert model.cost_usd == pytest.approx(answer.cost_usd) and model.cost_usd > 0
        assert answer.first_token_seconds is not None
    if warm:  # claude's modelUsage is cumulative over the process: the ledger keeps both
        (total,) = answers[1].process_model_usage
        assert (total.input_tokens, total.output_tokens) == (71, 20)
        assert total.cost_usd == pytest.approx(answers[1].process_cost_usd)


def test_turns_two_processes_start_together_cannot_all_pass_an_owner_cap(
        ledger_path: Path, tmp_path: Path) -> None:
    # Two processes, two sessions each, all of owner "xi", start their turns at the same
    # moment; each turn in flight is reserved $1 and the cap $2.5 lets three start in all.
    with open_ledger(ledger_path) as ledger:
        sessions = [ledger.create_session(owner="xi").session_id for _ in range(4)]
        ledger.set_owner_budget("xi", usd=2.5)
    trigger = tmp_path / "go"
    script = Path(__file__).parent / "support" / "owner_turns.py"
    env = {**_cli_env(), "CHATLEDGER_SPEND_RESERVE_USD": "1", "CHATLEDGER_MAX_RUNS": "4"}
    processes = [subprocess.Popen(
        [sys.executable, str(script), str(ledger_path), str(trigger), "[[slow 4]] hi", *pair],
        stdout=subprocess.PIPE, text=True, env=env) for pair in (sessions[:2], sessions[2:])]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        trigger.touch()
        outputs = [process.communicate(timeout=120)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    results = [json.loads(line) for output in outputs for line in output.splitlines()]
    assert len(results) == 4, outputs
    refused = [result for result in results if not result["ok"]]
    assert [result["reason"] for result in refused] == ["budget_exceeded"], results
    assert "3 turn(s) in flight" in refused[0]["error"]


def test_a_turn_start_waits_while_another_process_starts_one_of_the_same_owner(
        ledger_path: Path) -> None:
    with open_ledger(ledger_path, spend_reserve_usd=1.0) as ledger:
        mine = ledger.create_session(owner="uma").session_id
        theirs = ledger.create_session(owner="uma").session_id
        ledger.set_owner_budget("uma", usd=1.0)
        log = ledger.runtime.log
        other = LeaseOwner(host="another-host", pid=4242, token="other")
        # Another process is between its cap check and its RunStarted: it holds the start lease.
        start = log.acquire_lease(owner_start_lease_id("uma"), other, 30)
        assert start is not None
        results: dict[str, Any] = {}
        thread = _send_in_thread(ledger, mine, "hello", results)

        def started() -> bool:
            return any(isinstance(r.event, MessageSent) for r in ledger.events(mine))

        assert not wait_until(started, 0.5)  # this turn waits for the start lease
        session_lease = log.acquire_lease(theirs, other, 30)
        version = ledger.info(theirs).version  # type: ignore[union-attr]
        log.append(theirs, [MessageSent(turn=1, text="theirs"), RunStarted(turn=1)], version,
                   lease=session_lease)
        log.release_lease(start)  # their turn is recorded in flight: now this one is checked
        thread.join(30)
        assert results[mine].reason == "budget_exceeded"
        assert "1 turn(s) in flight" in (results[mine].error or "")
        assert not started()
