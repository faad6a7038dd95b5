"""The decisions of a turn, without actors, threads or processes: its prompt and argv, what
streams while the agent runs, which events and updates a finished run produces; the typed
updates as the old dicts; the expiry policy; failure reasons refused outside their list."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from chatledger.actors.expiry import expiry_due
from chatledger.actors.turn import (
    RecordOutcome,
    RetryWithPromptHistory,
    TurnStream,
    failure_reason,
    finish_run,
    plan_turn,
    resume_session_id,
)
from chatledger.actors.updates import (
    CanvasModificationUpdate,
    ErrorUpdate,
    TextDeltaUpdate,
    TextUpdate,
    ToolCallUpdate,
    TurnDone,
    turn_failed,
)
from chatledger.agent import (
    CLAUDE,
    RunOutcome,
    TextDelta,
    ToolCallCompleted,
    build_argv,
    build_prompt,
)
from chatledger.agent.dialects.claude import NO_CONVERSATION
from chatledger.config import Config
from chatledger.errors import InvalidEventError
from chatledger.events import (
    FAILURE_REASONS,
    AgentSessionLost,
    CanvasModified,
    HistoryMessage,
    MessageSent,
    ResponseReceived,
    RunFailed,
    RunStarted,
    SessionInfo,
    ToolCall,
    decode_event,
    encode_event,
)
from chatledger.manager import update_to_dict

CANVAS_TOOL = "mcp__atomizer-tools__apply_canvas_change"
WHEN = datetime(2026, 1, 1, tzinfo=timezone.utc)
CONFIG = Config(agent_command=("claude",), history_window=2)


def info(**fields: Any) -> SessionInfo:
    fields.setdefault("session_id", "s-1")
    fields.setdefault("version", 5)
    return SessionInfo(**fields)


def recent(*texts: str) -> list[HistoryMessage]:
    return [HistoryMessage(role="user" if n % 2 == 0 else "assistant", content=text,
                           timestamp=WHEN, turn=n // 2 + 1, mode="user")
            for n, text in enumerate(texts)]


def plan(**overrides: Any) -> Any:
    arguments: dict[str, Any] = dict(
        info=info(turn_count=2), recent=recent("q1", "a1", "q2", "a2"), text="hello",
        canvas_state={"nodes": []}, config=CONFIG, dialect=CLAUDE, mcp_config_path=None, attempt=1,
        resume=None, host="box", pid=42,
    )
    arguments.update(overrides)
    return plan_turn(**arguments)


def canvas_call(change: dict[str, Any], tool_use_id: str = "t1") -> ToolCall:
    return ToolCall(name=CANVAS_TOOL, input=change, output={"modification": change},
                    tool_use_id=tool_use_id)


# -- starting a turn ------------------------------------------------------------------------


def test_a_first_attempt_records_the_message_then_the_run_of_the_next_turn() -> None:
    planned = plan()
    assert planned.turn == 3
    sent, started = planned.events
    assert sent == MessageSent(turn=3, text="hello", canvas_state={"nodes": []})
    assert isinstance(started, RunStarted)
    assert (started.turn, started.attempt, started.host, started.pid) == (3, 1, "box", 42)
    assert started.argv == tuple(planned.argv)
    assert started.prompt_digest == planned.prompt.digest
    assert started.history_strategy == "prompt" and started.resume_agent_session_id is None


def test_the_prompt_and_argv_are_the_agent_builders_own_for_the_session_as_it_is() -> None:
    planned = plan(mcp_config_path="/tmp/mcp.json")
    assert planned.prompt == build_prompt(
        mode="user", study_id=None, history=recent("q1", "a1", "q2", "a2"),
        canvas_state={"nodes": []}, message="hello", window=2,
    )
    assert planned.argv == build_argv(
        ("claude",), mode="user", output_format="stream-json",
        allowed_tools=CONFIG.allowed_tools, mcp_config_path="/tmp/mcp.json",
        include_partial_messages=True, resume_session_id=None,
    )
    power = plan(info=info(turn_count=2, mode="power"))
    assert "--dangerously-skip-permissions" in power.argv


def test_a_retry_keeps_the_turn_number_and_sends_no_second_message() -> None:
    planned = plan(attempt=2, resume=False)
    assert planned.turn == 2
    assert [type(event) for event in planned.events] == [RunStarted]
    assert planned.events[0].attempt == 2  # type: ignore[attr-defined]


def test_the_resume_strategy_resumes_only_an_id_that_cannot_pose_as_a_flag() -> None:
    resume = Config(history_strategy="resume")
    assert resume_session_id(info(agent_session_id="abc-123"), resume, None) == "abc-123"
    assert resume_session_id(info(agent_session_id="--yolo"), resume, None) is None
    assert resume_session_id(info(agent_session_id=None), resume, None) is None
    assert resume_session_id(info(agent_session_id="abc-123"), CONFIG, None) is None
    assert resume_session_id(info(agent_session_id="abc-123"), resume, False) is None


def test_a_resumed_turn_sends_no_history_and_says_what_it_resumed() -> None:
    planned = plan(info=info(turn_count=2, agent_session_id="abc-123"),
                   config=Config(history_strategy="resume", history_window=2))
    started = planned.events[-1]
    assert isinstance(started, RunStarted)
    assert started.history_strategy == "resume" and started.resume_agent_session_id == "abc-123"
    assert "q1" not in planned.prompt.text and "hello" in planned.prompt.text
    assert "--resume=abc-123" in planned.argv


def test_a_live_resumed_turns_reseed_is_built_when_asked_from_the_tail_as_planned() -> None:
    tail = recent("q1", "a1", "q2", "a2")
    planned = plan(info=info(turn_count=2, agent_session_id="abc-123"), recent=tail, live=True)
    assert planned.warm is not None and planned.warm.reseed is not None
    tail.append(HistoryMessage(role="user", content="q3", timestamp=WHEN, turn=3, mode="user"))
    reseed = planned.warm.reseed()  # what the warm pool calls for a freshly resumed process
    assert reseed is not None and [recorded.turn for recorded in reseed.turns] == [1, 2]
    assert reseed.message == "hello"


# -- while the agent runs -------------------------------------------------------------------


def test_deltas_stream_only_when_asked_and_each_canvas_change_once() -> None:
    quiet, chatty = TurnStream(stream_deltas=False), TurnStream(stream_deltas=True)
    assert quiet.updates_for(TextDelta(text="he")) == []
    assert chatty.updates_for(TextDelta(text="he")) == [TextDeltaUpdate(content="he")]
    assert chatty.updates_for(TextDelta(text="")) == []
    change = {"action": "add_node", "id": "n1"}
    first = chatty.updates_for(ToolCallCompleted(tool_call=canvas_call(change, "t1")))
    again = chatty.updates_for(ToolCallCompleted(tool_call=canvas_call(change, "t2")))
    progress = ToolCallUpdate(name=CANVAS_TOOL, is_error=False)
    assert first == [progress, CanvasModificationUpdate(modification=change)]
    assert again == [progress]
    assert chatty.streamed_modifications == (change,)
    quiet_first = quiet.updates_for(ToolCallCompleted(tool_call=canvas_call(change, "t1")))
    assert quiet_first == [CanvasModificationUpdate(modification=change)]


# -- when the run has ended -----------------------------------------------------------------


def test_an_answer_records_its_canvas_changes_then_the_response_and_tells_text_then_done() -> None:
    streamed = {"action": "add_node", "id": "n1"}
    in_text = {"action": "add_edge", "from": "n1", "to": "n2"}
    fence = msgspec.json.encode({"modification": in_text}).decode()
    outcome = RunOutcome(ok=True, text=f"done ```json\n{fence}\n```",
                         tool_calls=(canvas_call(streamed),), exit_code=0, duration=1.5,
                         cost_usd=0.01, agent_session_id="agent-1")
    decision = finish_run(turn=3, outcome=outcome, started=None, agent_session_id=None,
                          streamed_modifications=[streamed])
    assert isinstance(decision, RecordOutcome)
    assert decision.events[:2] == [CanvasModified(turn=3, modification=streamed),
                                   CanvasModified(turn=3, modification=in_text)]
    answer = decision.events[2]
    assert isinstance(answer, ResponseReceived)
    assert (answer.turn, answer.cost_usd, answer.agent_session_id) == (3, 0.01, "agent-1")
    assert decision.updates == [
        CanvasModificationUpdate(modification=in_text),  # the streamed one is not told twice
        TextUpdate(content=outcome.text),
        TurnDone(tool_calls=outcome.tool_calls, turn=3, ok=True, reason=None, cost_usd=0.01,
                 duration=1.5),
    ]


def test_a_failed_run_records_run_failed_with_its_reason_and_tells_error_then_done() -> None:
    outcome = RunOutcome(ok=False, failure_reason="timeout", message="Response timeout",
                         stderr_tail="tail", exit_code=None, duration=300.0)
    decision = finish_run(turn=1, outcome=outcome, started=None, agent_session_id=None)
    assert isinstance(decision, RecordOutcome)
    assert decision.events == [RunFailed(turn=1, reason="timeout", message="Response timeout",
                                         stderr_tail="tail", exit_code=None)]
    error, done = decision.updates
    assert error == ErrorUpdate(message="Response timeout")
    assert isinstance(done, TurnDone) and not done.ok and done.reason == "timeout"


def test_a_failure_without_a_listed_reason_is_recorded_truthfully() -> None:
    assert failure_reason(RunOutcome(ok=False)) == "exit_status"
    assert failure_reason(RunOutcome(ok=False, failure_reason="gremlins")) == "internal_error"
    for reason in FAILURE_REASONS:
        assert failure_reason(RunOutcome(ok=False, failure_reason=reason)) == reason


def test_a_lost_resumed_agent_session_means_retry_with_prompt_history() -> None:
    resumed = RunStarted(turn=2, resume_agent_session_id="gone-1", history_strategy="resume")
    lost = RunOutcome(ok=False, failure_reason="exit_status",
                      message=f"CLI error: {NO_CONVERSATION} gone-1", exit_code=1,
                      agent_session_lost=True)
    decision = finish_run(turn=2, outcome=lost, started=resumed, agent_session_id="gone-1")
    assert decision == RetryWithPromptHistory(
        AgentSessionLost(turn=2, agent_session_id="gone-1", message=lost.message)
    )
    # The same words from a run that resumed nothing are an ordinary failure.
    fresh = RunStarted(turn=2)
    assert isinstance(finish_run(turn=2, outcome=lost, started=fresh, agent_session_id=None),
                      RecordOutcome)


# -- the updates as the old dicts (manager) and JSON lines (cli send --json) ----------------


def json_line(value: Any) -> str:
    """A line as `chatledger send --json` prints it."""
    return json.dumps(msgspec.to_builtins(value), ensure_ascii=False, default=str)


def test_updates_print_as_exactly_the_old_dicts_json_lines() -> None:
    call = ToolCall(name="Read", input={"path": "a"})
    done = TurnDone(tool_calls=(call,), turn=3, ok=True, reason=None, cost_usd=None,
                    duration=1.0)
    assert json_line(done) == json.dumps({
        "type": "done", "tool_calls": [{"name": "Read", "input": {"path": "a"}}], "turn": 3,
        "ok": True, "reason": None, "cost_usd": None, "duration": 1.0,
    })
    error, cancelled = turn_failed("Turn cancelled", "cancelled")
    assert json_line(error) == json.dumps({"type": "error", "message": "Turn cancelled"})
    assert json_line(cancelled) == json.dumps({
        "type": "done", "tool_calls": [], "turn": None, "ok": False, "reason": "cancelled",
    })
    assert json_line(TextDeltaUpdate(content="é")) == json.dumps(
        {"type": "text_delta", "content": "é"}, ensure_ascii=False)
    assert json_line(CanvasModificationUpdate(modification={"a": 1})) == json.dumps(
        {"type": "canvas_modification", "modification": {"a": 1}})


def test_the_manager_yields_done_with_only_its_tool_calls() -> None:
    call = ToolCall(name="Read")
    assert update_to_dict(TurnDone(tool_calls=(call,), turn=1, ok=True, cost_usd=0.5,
                                   duration=2.0)) == {"type": "done",
                                                      "tool_calls": [{"name": "Read"}]}
    assert update_to_dict(TextUpdate(content="hi")) == {"type": "text", "content": "hi"}


# -- expiry ---------------------------------------------------------------------------------


NOW = WHEN.timestamp()


@pytest.mark.parametrize(
    ("fields", "busy", "expected"),
    [
        ({"status": "idle", "last_active": WHEN - timedelta(hours=25)}, False, 90000.0),
        ({"status": "idle", "last_active": WHEN - timedelta(hours=24)}, False, 86400.0),
        ({"status": "idle", "last_active": WHEN - timedelta(hours=23)}, False, None),
        ({"status": "idle", "last_active": WHEN - timedelta(hours=25)}, True, None),
        ({"status": "running", "last_active": WHEN - timedelta(hours=25)}, False, None),
        ({"status": "expired", "last_active": WHEN - timedelta(hours=25)}, False, None),
        ({"status": "idle", "last_active": None}, False, None),
        ({"status": "new", "version": 0, "last_active": WHEN - timedelta(hours=25)}, False,
         None),
    ],
    ids=["idle past the age", "idle exactly the age", "younger", "busy in a live actor",
         "a turn open", "already expired", "no activity", "not in the ledger"],
)
def test_a_session_expires_once_idle_for_the_expiry_age_and_never_while_in_use(
    fields: dict[str, Any], busy: bool, expected: float | None
) -> None:
    assert expiry_due(info(**fields), now=NOW, expiry_age=86400, busy=busy) == expected


# -- failure reasons ------------------------------------------------------------------------


def test_a_run_failed_with_an_unlisted_reason_is_refused_before_it_is_written() -> None:
    with pytest.raises(InvalidEventError, match="not one of"):
        encode_event(RunFailed(turn=1, reason="gremlins"))  # type: ignore[arg-type]
    assert "ledger_error" not in FAILURE_REASONS  # a caller's reason, never recorded
    for reason in FAILURE_REASONS:
        assert decode_event(encode_event(RunFailed(turn=1, reason=reason))) == RunFailed(
            turn=1, reason=reason)


def test_a_stored_run_failed_with_any_reason_still_decodes_as_run_failed() -> None:
    stored = msgspec.msgpack.encode({"type": "run_failed", "turn": 4, "reason": "gremlins",
                                     "message": "from an older release"})
    decoded = decode_event(stored)
    assert isinstance(decoded, RunFailed)
    assert (decoded.turn, decoded.reason, decoded.message) == (4, "gremlins",
                                                               "from an older release")
