"""Pure folds: session info, history and time travel from a session's records."""

from __future__ import annotations

import pytest

from chatledger.events import (
    CanvasModified,
    MessageSent,
    ModeSwitched,
    ProjectionError,
    ResponseReceived,
    RunFailed,
    RunStarted,
    SessionCreated,
    SessionExpired,
    StudyContextSet,
    ToolCall,
    at_version,
    history,
    session_info,
)
from chatledger.storage import EventLog


def conversation(log: EventLog) -> None:
    log.append("s", [SessionCreated(mode="user", study_id="a")], 0)
    log.append("s", [MessageSent(turn=1, text="hello", canvas_state={"nodes": []}),
                     RunStarted(turn=1, argv=("claude", "--print"))], 1)
    log.append("s", [CanvasModified(turn=1, modification={"add": "node"}),
                     ResponseReceived(turn=1, text="hi there", cost_usd=0.25,
                                      tool_calls=(ToolCall(name="Read", input={"p": 1}),),
                                      agent_session_id="agent-1")], 3)
    log.append("s", [ModeSwitched(from_mode="user", to_mode="power"),
                     StudyContextSet(study_id="b")], 5)
    log.append("s", [MessageSent(turn=2, text="again"), RunStarted(turn=2),
                     RunFailed(turn=2, reason="timeout", message="Response timeout")], 7)


def test_session_info_folds_every_fact(log: EventLog) -> None:
    conversation(log)
    info = session_info("s", log.read_session("s"))
    assert (info.mode, info.study_id) == ("power", "b")
    assert info.message_count == 3  # two user messages and one stored answer
    assert info.turn_count == 2
    assert info.total_cost_usd == pytest.approx(0.25)
    assert info.last_error == "timeout: Response timeout"
    assert info.status == "idle" and info.open_turn is None
    assert info.agent_session_id == "agent-1"
    assert info.version == 10 and info.failure_count == 1
    assert info == log.info("s")


def test_history_lists_messages_with_roles_tool_calls_and_canvas_changes(log: EventLog) -> None:
    conversation(log)
    messages = history(log.read_session("s"))
    assert [(m.role, m.content) for m in messages] == [
        ("user", "hello"), ("assistant", "hi there"), ("user", "again"),
        ("error", "timeout: Response timeout"),
    ]
    assert messages[0].canvas_state == {"nodes": []}
    assert messages[1].tool_calls[0].name == "Read"
    assert messages[1].canvas_modifications == ({"add": "node"},)
    assert messages[2].mode == "power"


def test_state_at_any_version_is_time_travel(log: EventLog) -> None:
    conversation(log)
    records = log.read_session("s")
    at_three = session_info("s", at_version(records, 3))
    assert (at_three.status, at_three.open_turn, at_three.message_count) == ("running", 1, 1)
    at_five = session_info("s", at_version(records, 5))
    assert at_five.mode == "user" and at_five.message_count == 2
    assert [m.content for m in history(at_version(records, 5))] == ["hello", "hi there"]
    assert session_info("s", at_version(records, 0)).version == 0


def test_a_gap_in_versions_is_refused(log: EventLog) -> None:
    conversation(log)
    records = log.read_session("s")
    with pytest.raises(ProjectionError):
        session_info("s", [records[0], records[2]])


def test_expiry_marks_the_session_expired(log: EventLog) -> None:
    log.append("s", [SessionCreated(), SessionExpired(reason="idle", idle_seconds=90000.0)], 0)
    assert log.info("s").status == "expired"  # type: ignore[union-attr]
