"""Warm sessions with the stand-in: one live agent process per session, recorded in the ledger
(process start and stop with reason, cost per turn from the cumulative total, cold
fallbacks), eviction beyond max_warm_agents, idle close, interrupt, respawn after death,
processes spawned ahead of need, and a turn lost from the agent's transcript re-seeded."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatledger import Ledger
from chatledger.actors.updates import TextDeltaUpdate, TextResetUpdate
from chatledger.agent.dialects import DIALECTS
from chatledger.agent.dialects.standin import StandinDialect
from chatledger.events import (
    AgentProcessStarted,
    AgentProcessStopped,
    ColdRunChosen,
    ResponseReceived,
    RunFailed,
    RunStarted,
    TranscriptReseeded,
)
from chatledger.transcript.reseed import TurnMark, missing_turns
from tests.support.claude_harness import wait_until

STANDIN = f"{sys.executable} -m chatledger.testing.standin"


def open_ledger(path: Path, **settings: Any) -> Ledger:
    options: dict[str, Any] = {"agent_command": STANDIN, "warm_agents": True,
                               "max_warm_agents": 4, "kill_grace": 2.0}
    options.update(settings)
    return Ledger(str(path / "ledger"), **options)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with open_ledger(tmp_path) as opened:
        yield opened


def events_of(ledger: Ledger, session_id: str, kind: type) -> list[Any]:
    return [r.event for r in ledger.events(session_id) if isinstance(r.event, kind)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_warm_turns_share_one_process_and_record_cost_per_turn(ledger: Ledger) -> None:
    session = ledger.create_session().session_id
    answers = [ledger.send(session, text) for text in ("one", "two", "three")]
    assert [a.text for a in answers] == ["echo: one", "echo: two", "echo: three"]
    started = events_of(ledger, session, AgentProcessStarted)
    assert len(started) == 1 and started[0].turn == 1 and "--input-format" in started[0].argv
    received = events_of(ledger, session, ResponseReceived)
    totals = [r.process_cost_usd for r in received]
    assert totals[0] < totals[1] < totals[2]
    assert received[1].cost_usd == pytest.approx(totals[1] - totals[0])
    assert [r.history_strategy for r in events_of(ledger, session, RunStarted)] == ["live"] * 3


def test_interrupt_records_the_partial_text_and_the_process_lives_on(ledger: Ledger) -> None:
    session = ledger.create_session().session_id
    ledger.send(session, "warm up")
    streaming = threading.Event()

    def on_update(update: Any) -> None:
        if isinstance(update, TextDeltaUpdate):
            streaming.set()

    interrupted: list[bool] = []

    def interrupt_when_streaming() -> None:
        if streaming.wait(10):
            interrupted.append(ledger.interrupt(session))

    threading.Thread(target=interrupt_when_streaming, daemon=True).start()
    outcome = ledger.send(session, "a long one [[slow 30]]", on_update=on_update,
                          stream_deltas=True)
    assert interrupted == [True]
    assert (outcome.ok, outcome.reason) == (False, "cancelled")
    failed = events_of(ledger, session, RunFailed)[-1]
    assert failed.partial_text.startswith("echo:")
    assert ledger.send(session, "after").text == "echo: after"
    assert len(events_of(ledger, session, AgentProcessStarted)) == 1


def test_interrupt_without_a_running_turn_says_so(ledger: Ledger) -> None:
    session = ledger.create_session().session_id
    assert ledger.interrupt(session) is False


def test_a_process_that_dies_fails_the_turn_and_the_next_turn_respawns(ledger: Ledger) -> None:
    session = ledger.create_session().session_id
    ledger.send(session, "hello")
    died = ledger.send(session, "[[fail]]")
    assert (died.ok, died.reason) == (False, "interrupted")
    stopped = events_of(ledger, session, AgentProcessStopped)
    assert [(s.reason, s.exit_code) for s in stopped] == [("crashed", 1)]
    assert ledger.send(session, "again").text == "echo: again"
    started = events_of(ledger, session, AgentProcessStarted)
    assert len(started) == 2
    assert any(word.startswith("--resume=") for word in started[1].argv)


def test_beyond_max_warm_agents_the_least_recently_used_is_evicted(tmp_path: Path) -> None:
    with open_ledger(tmp_path, max_warm_agents=2) as ledger:
        sessions = [ledger.create_session().session_id for _ in range(4)]
        for round_ in range(2):
            for session in sessions:
                assert ledger.send(session, f"turn {round_}").ok
                assert len(ledger.runtime.warm.warm_sessions()) <= 2  # type: ignore[union-attr]
        evicted = [s for s in sessions
                   if [e.reason for e in events_of(ledger, s, AgentProcessStopped)]]
        assert evicted  # every turn ran and was recorded, with processes evicted between
        for session in sessions:
            assert len(events_of(ledger, session, ResponseReceived)) == 2
            for stop in events_of(ledger, session, AgentProcessStopped):
                assert (stop.reason, stop.exit_code) == ("evicted", 0)


def test_a_mode_switch_replaces_the_process(ledger: Ledger) -> None:
    session = ledger.create_session(mode="user").session_id
    ledger.send(session, "as user")
    ledger.switch_mode(session, "power")
    assert ledger.send(session, "as power").ok
    stopped = events_of(ledger, session, AgentProcessStopped)
    assert [s.reason for s in stopped] == ["mode_switch"]
    started = events_of(ledger, session, AgentProcessStarted)
    assert "--dangerously-skip-permissions" in started[-1].argv


def test_an_idle_process_is_closed_after_warm_idle_timeout(tmp_path: Path) -> None:
    with open_ledger(tmp_path, warm_idle_timeout=0.3) as ledger:
        session = ledger.create_session().session_id
        ledger.send(session, "hello")
        pid = events_of(ledger, session, AgentProcessStarted)[0].pid
        stops = wait_until(lambda: events_of(ledger, session, AgentProcessStopped), 10)
        assert [(s.reason, s.exit_code) for s in stops] == [("idle", 0)]
        assert wait_until(lambda: not alive(pid), 5)


def test_passivation_and_close_stop_the_process_and_say_why(tmp_path: Path) -> None:
    with open_ledger(tmp_path) as ledger:
        first = ledger.create_session().session_id
        second = ledger.create_session().session_id
        ledger.send(first, "hello")
        ledger.send(second, "hello")
        assert ledger.passivate(first)
        wait_until(lambda: events_of(ledger, first, AgentProcessStopped), 10)
    with open_ledger(tmp_path) as reopened:
        assert [s.reason for s in events_of(reopened, first, AgentProcessStopped)] == \
            ["passivated"]
        assert [s.reason for s in events_of(reopened, second, AgentProcessStopped)] == \
            ["shutdown"]
        assert reopened.send(first, "back").text == "echo: back"


def test_a_dialect_that_cannot_run_live_runs_cold_and_says_so(tmp_path: Path) -> None:
    with open_ledger(tmp_path, output_format="text") as ledger:
        session = ledger.create_session().session_id
        assert ledger.send(session, "hello").text == "echo: hello"
        chosen = events_of(ledger, session, ColdRunChosen)
        assert [c.reason for c in chosen] == ["unsupported"]
        assert not events_of(ledger, session, AgentProcessStarted)


def test_an_agent_that_fails_initialize_runs_cold_and_says_so(tmp_path: Path) -> None:
    command = f"{sys.executable} -c 'import sys; sys.exit(3)'"  # speaks no protocol at all
    with open_ledger(tmp_path, agent_command=command, agent_dialect="standin") as ledger:
        session = ledger.create_session().session_id
        outcome = ledger.send(session, "hello")
        assert (outcome.ok, outcome.reason) == (False, "exit_status")  # the cold run's own
        chosen = events_of(ledger, session, ColdRunChosen)
        assert [c.reason for c in chosen] == ["initialize_failed"]
        started = events_of(ledger, session, RunStarted)[-1]
        assert chosen[0].argv and chosen[0].argv != started.argv  # what ran, not the live one
        assert "--input-format" not in chosen[0].argv


def test_a_stream_retried_without_streaming_resets_the_deltas(ledger: Ledger) -> None:
    session = ledger.create_session().session_id
    outcome = ledger.send(session, "hi [[retry-stream]]", stream_deltas=True)
    resets = [u.content for u in outcome.updates if isinstance(u, TextResetUpdate)]
    assert resets == ["echo: hi"]
    assert outcome.text == "echo: hi"


def test_every_text_block_of_a_turn_is_recorded(ledger: Ledger) -> None:
    session = ledger.create_session().session_id
    ledger.send(session, "[[canvas]]")
    received = events_of(ledger, session, ResponseReceived)[-1]
    assert received.text_blocks[0] == "I will add the design variable to the canvas."
    assert received.text_blocks[-1] == received.text


def pool_process(ledger: Ledger, session_id: str) -> Any:
    """The session's live agent once it has started (None until then)."""
    entry = ledger.runtime.warm._agents.get(session_id)  # type: ignore[union-attr]
    if entry is None or entry.starting or not entry.agent.alive:
        return None
    return entry.agent


def test_a_new_sessions_process_is_spawned_before_its_first_turn_is_sent(
        ledger: Ledger) -> None:
    session = ledger.create_session().session_id
    agent = wait_until(lambda: pool_process(ledger, session), 20)
    assert agent is not None  # spawned on activation, with nothing sent yet
    sent_at = time.monotonic()
    assert ledger.send(session, "hello").text == "echo: hello"
    assert agent.started_at < sent_at
    [started] = events_of(ledger, session, AgentProcessStarted)
    assert (started.pid, started.reason, started.turn) == (agent.pid, "activation", 1)


def test_a_process_that_died_in_a_turn_is_respawned_right_after_it(ledger: Ledger) -> None:
    session = ledger.create_session().session_id
    ledger.send(session, "hello")
    first = events_of(ledger, session, AgentProcessStarted)[0].pid
    assert ledger.send(session, "[[fail]]").reason == "interrupted"
    agent = wait_until(lambda: pool_process(ledger, session), 20)
    assert agent is not None and agent.pid != first
    sent_at = time.monotonic()
    assert ledger.send(session, "again").text == "echo: again"
    assert agent.started_at < sent_at
    started = events_of(ledger, session, AgentProcessStarted)[-1]
    assert (started.pid, started.reason, started.turn) == (agent.pid, "after_turn", 3)
    assert any(word.startswith("--resume=") for word in started.argv)


def test_processes_spawned_ahead_stay_within_max_warm_agents(tmp_path: Path) -> None:
    with open_ledger(tmp_path, max_warm_agents=2, warm_idle_timeout=3) as ledger:
        sessions = [ledger.create_session().session_id for _ in range(4)]
        warm = ledger.runtime.warm
        assert warm is not None
        assert warm.warm_sessions() == sessions[:2]  # the others found no free slot
        assert wait_until(lambda: all(pool_process(ledger, s) for s in sessions[:2]), 20)
        ahead = sessions[:2]
        # never used, closed when idle: its start is recorded with its stop
        stops = wait_until(lambda: events_of(ledger, ahead[0], AgentProcessStopped), 20)
        assert [s.reason for s in stops] == ["idle"]
        assert [e.reason for e in events_of(ledger, ahead[0], AgentProcessStarted)] == \
            ["activation"]


class _FileResumingStandin(StandinDialect):
    """The stand-in, posing as an agent that resumes from its transcript file (as claude)."""

    name = "standin-file"
    resumes_from_transcript_file = True


@pytest.mark.parametrize("flushed", [False, True], ids=["lost-in-flush-window", "flushed"])
def test_a_turn_missing_from_the_resumed_transcript_is_reseeded_through_the_prompt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flushed: bool) -> None:
    monkeypatch.setitem(DIALECTS, "standin-file", _FileResumingStandin())
    work = tmp_path / "work"
    work.mkdir()
    settings = {"agent_dialect": "standin-file", "agent_cwd": str(work), "agent_env": {
        "HOME": str(tmp_path / "home"), "CHATLEDGER_STANDIN_TRANSCRIPTS": "1"}}
    with open_ledger(tmp_path, **settings) as ledger:
        session = ledger.create_session().session_id
        assert ledger.send(session, "the bird is a pelican").ok
        second = "and the fish a trout" + ("" if flushed else " [[unflushed]]")
        assert ledger.send(session, second).ok
        if flushed:  # the agent writes its transcript just after its result, as claude does
            assert wait_until(lambda: any("trout" in path.read_text() for path in
                                          (tmp_path / "home").rglob("*.jsonl")), 10)
        pid = events_of(ledger, session, AgentProcessStarted)[-1].pid
        os.killpg(pid, signal.SIGKILL)
        assert wait_until(lambda: not alive(pid), 10)
        answer = ledger.send(session, "what did I say? [[prompt]]").text
        reseeded = events_of(ledger, session, TranscriptReseeded)
    assert "pelican" in answer and "trout" in answer  # the agent knows both turns
    if flushed:
        assert reseeded == [] and "## Conversation so far" not in answer
    else:
        [event] = reseeded
        assert (event.turn, event.missing_turns, event.method) == (3, (2,), "prompt")
        assert "## Conversation so far" in answer and "pelican" not in \
            answer.split("## Conversation so far")[1]  # only the lost turn was put back


def write_transcript(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries) + "not json\n")
    return path


def said(kind: str, text: str, uuid: str = "") -> dict[str, Any]:
    content: Any = text if kind == "user" else [{"type": "text", "text": text}]
    return {"type": kind, "uuid": uuid or f"{kind}-{text}",
            "message": {"role": kind, "content": content}}


def test_the_transcript_check_finds_the_last_turn_by_its_id_and_earlier_ones_by_answer(
        tmp_path: Path) -> None:
    turns = [TurnMark(None, "first answer"), TurnMark("turn-2", "second answer")]
    both = write_transcript(tmp_path / "both.jsonl", [
        said("user", "q1"), said("assistant", "first answer"),
        said("user", "q2", "turn-2"), said("assistant", "second answer")])
    assert missing_turns(both, turns) == 0
    asked_only = write_transcript(tmp_path / "asked.jsonl", [
        said("user", "q1"), said("assistant", "first answer"), said("user", "q2", "turn-2")])
    assert missing_turns(asked_only, turns) == 1  # the question was kept, not the answer
    same_answer_other_id = write_transcript(tmp_path / "other.jsonl", [
        said("user", "q1"), said("assistant", "first answer"),
        said("user", "q2", "another-id"), said("assistant", "second answer")])
    assert missing_turns(same_answer_other_id, turns) == 1
    assert missing_turns(write_transcript(tmp_path / "empty.jsonl", []), turns) == 2
    assert missing_turns(tmp_path / "absent.jsonl", turns) == 2
    assert missing_turns(both, []) == 0
