"""LiveAgent: one long-lived agent process taking many turns, with the stand-in's live mode."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from chatledger.agent import STANDIN, CancelSwitch, RunSpec, TextDelta, TextReset
from chatledger.agent.live import LiveAgent, LiveStartError

LIVE_ARGV = (sys.executable, "-m", "chatledger.testing.standin", "--print", "--input-format",
             "stream-json", "--output-format", "stream-json", "--verbose",
             "--include-partial-messages")


def spec(prompt: str, **fields: Any) -> RunSpec:
    return RunSpec(argv=LIVE_ARGV, prompt=prompt, **fields)


@pytest.fixture
def agent() -> Iterator[LiveAgent]:
    live = LiveAgent(LIVE_ARGV, STANDIN, kill_grace=2.0)
    live.start()
    yield live
    live.close()


def test_turns_run_in_one_process_and_cost_is_the_difference_of_the_totals(
    agent: LiveAgent,
) -> None:
    first = agent.run_turn(spec("one"), turn_id="t1")
    second = agent.run_turn(spec("two"), turn_id="t2")
    assert (first.ok, first.text) == (True, "echo: one")
    assert (second.ok, second.text) == (True, "echo: two")
    assert first.pid == second.pid and agent.alive
    assert first.agent_session_id == second.agent_session_id
    assert first.process_cost_usd is not None and second.process_cost_usd is not None
    assert second.process_cost_usd > first.process_cost_usd
    assert second.cost_usd == pytest.approx(second.process_cost_usd - first.process_cost_usd)
    assert first.cost_usd == pytest.approx(first.process_cost_usd)


def test_a_cancel_sends_interrupt_keeps_the_process_and_the_partial_text(
    agent: LiveAgent,
) -> None:
    cancel = CancelSwitch()
    seen = threading.Event()

    def on_update(update: Any) -> None:
        if isinstance(update, TextDelta):
            seen.set()

    def cancel_when_streaming() -> None:
        if seen.wait(10):
            cancel.set()

    threading.Thread(target=cancel_when_streaming, daemon=True).start()
    outcome = agent.run_turn(spec("a long one [[slow 30]]", cancel=cancel), turn_id="t1",
                             on_update=on_update)
    assert outcome.failure_reason == "cancelled"
    assert outcome.duration < 5
    assert outcome.partial_text.startswith("echo:")
    assert agent.alive
    after = agent.run_turn(spec("after"), turn_id="t2")
    assert (after.ok, after.text, after.pid) == (True, "echo: after", outcome.pid)


def test_a_process_that_dies_mid_turn_gives_interrupted_and_is_not_alive(
    agent: LiveAgent,
) -> None:
    outcome = agent.run_turn(spec("[[fail]]"), turn_id="t1")
    assert outcome.failure_reason == "interrupted"
    assert "ended before the turn's result" in outcome.message
    assert not agent.alive


def test_a_dead_process_refuses_the_next_turn_as_interrupted(agent: LiveAgent) -> None:
    agent.kill()
    outcome = agent.run_turn(spec("hello"), turn_id="t1")
    assert outcome.failure_reason == "interrupted"


def test_a_timeout_interrupts_the_turn(agent: LiveAgent) -> None:
    outcome = agent.run_turn(spec("[[slow 30]]", timeout=0.3), turn_id="t1")
    assert outcome.failure_reason == "timeout"
    assert agent.alive


def test_close_by_stdin_eof_exits_zero(agent: LiveAgent) -> None:
    agent.run_turn(spec("one"), turn_id="t1")
    assert agent.close() == 0
    assert not agent.alive


def test_an_agent_that_cannot_start_raises_live_start_error() -> None:
    live = LiveAgent(("/nonexistent/agent-binary",), STANDIN)
    with pytest.raises(LiveStartError):
        live.start()


def test_an_agent_that_never_answers_initialize_raises_live_start_error() -> None:
    live = LiveAgent((sys.executable, "-c", "import time; time.sleep(30)"), STANDIN,
                     kill_grace=0.5)
    with pytest.raises(LiveStartError):
        live.start(timeout=0.5)
    assert not live.alive


def test_can_use_tool_requests_reach_the_turn_and_the_answer_is_honoured() -> None:
    live = LiveAgent((*LIVE_ARGV, "--permission-prompt-tool", "stdio"), STANDIN)
    live.start()
    try:
        asked: list[dict[str, Any]] = []

        def on_permission(message: dict[str, Any]) -> None:
            asked.append(message)
            live.answer_permission(message["request_id"], False, message="no thanks")

        outcome = live.run_turn(spec("[[write out.txt]]"), turn_id="t1",
                                on_permission=on_permission)
        assert [m["request"]["tool_name"] for m in asked] == ["Write"]
        assert outcome.ok and outcome.text.startswith("I could not write")
        assert [d["tool_name"] for d in outcome.permission_denials] == ["Write"]
    finally:
        live.close()


def test_a_stream_retried_without_streaming_gives_a_reset(agent: LiveAgent) -> None:
    updates: list[Any] = []
    outcome = agent.run_turn(spec("hello [[retry-stream]]"), turn_id="t1",
                             on_update=updates.append)
    deltas = [u.text for u in updates if isinstance(u, TextDelta)]
    resets = [u.text for u in updates if isinstance(u, TextReset)]
    assert "".join(deltas) == "...completed norm"
    assert resets == ["echo: hello"]
    assert outcome.text == "echo: hello"


def test_the_orphan_guard_and_reaper_contain_the_live_process(agent: LiveAgent) -> None:
    assert agent.pid is not None
    os.kill(agent.pid, 0)  # alive, leading its own group
    assert os.getpgid(agent.pid) == agent.pid
    agent.close()
    with pytest.raises(ProcessLookupError):
        os.kill(agent.pid, 0)
