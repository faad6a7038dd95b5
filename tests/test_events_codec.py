"""The codec: every event round-trips, old shapes upcast, unknown tags survive verbatim."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatledger.events import (
    EVENT_TYPES,
    FAILURE_REASONS,
    SCHEMA_VERSION,
    AgentProcessStarted,
    AgentProcessStopped,
    AgentSessionLost,
    BudgetSet,
    CanvasModified,
    ColdRunChosen,
    InterruptRequested,
    MessageSent,
    ModeSwitched,
    PermissionDecided,
    PermissionRequested,
    Redacted,
    ResponseReceived,
    RunFailed,
    RunStarted,
    SessionArchived,
    SessionCreated,
    SessionExpired,
    SessionResumed,
    SessionTagged,
    SessionTitled,
    SessionUnarchived,
    StudyContextSet,
    ToolCall,
    TranscriptDeleted,
    TranscriptEntriesAppended,
    TranscriptReseeded,
    TranscriptRestored,
    TurnRefused,
    UnknownEvent,
    decode_event,
    decode_record,
    encode_event,
    event_from_builtins,
    event_to_builtins,
    history,
    session_info,
)
from chatledger.events.codec import StoredEnvelope, encode_record
from chatledger.events.model import ForkedFrom, HeadCheckpointed
from chatledger.storage import EventLog

FIXTURE = Path(__file__).parent / "fixtures" / "ledger-v1"

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
texts = st.text(max_size=200)
turns = st.integers(1, 10_000)
tool_calls = st.builds(
    ToolCall, name=texts, input=json_values, output=json_values, is_error=st.booleans(),
    tool_use_id=texts,
)
finite = st.floats(allow_nan=False, allow_infinity=False)

EVENT_STRATEGIES = {
    SessionCreated: st.builds(SessionCreated, mode=st.sampled_from(["user", "power"]),
                              study_id=st.none() | texts, owner=st.none() | texts),
    SessionResumed: st.builds(SessionResumed),
    StudyContextSet: st.builds(StudyContextSet, study_id=st.none() | texts),
    ModeSwitched: st.builds(ModeSwitched, from_mode=texts, to_mode=texts),
    MessageSent: st.builds(MessageSent, turn=turns, text=texts, canvas_state=json_values),
    RunStarted: st.builds(RunStarted, turn=turns, argv=st.tuples(texts, texts),
                          prompt_digest=texts, attempt=st.integers(1, 5)),
    ResponseReceived: st.builds(
        ResponseReceived, turn=turns, text=texts,
        tool_calls=st.lists(tool_calls, max_size=3).map(tuple),
        exit_code=st.integers(-255, 255), duration=finite, cost_usd=st.none() | finite,
        usage=st.none() | st.dictionaries(st.text(max_size=10), st.integers(0, 10**6)),
        agent_session_id=st.none() | texts,
    ),
    CanvasModified: st.builds(CanvasModified, turn=turns, modification=json_values),
    RunFailed: st.builds(RunFailed, turn=turns, reason=st.sampled_from(FAILURE_REASONS),
                         message=texts,
                         stderr_tail=texts),
    AgentSessionLost: st.builds(AgentSessionLost, turn=turns, agent_session_id=texts),
    SessionExpired: st.builds(SessionExpired, reason=texts, idle_seconds=finite),
    TranscriptEntriesAppended: st.builds(
        TranscriptEntriesAppended, project_key=texts, agent_session_id=texts,
        subpath=st.none() | texts, entries=st.lists(json_values, max_size=4).map(tuple),
        turn=st.integers(0, 10_000), turn_session_id=st.none() | texts, summary=json_values,
    ),
    TranscriptRestored: st.builds(TranscriptRestored, turn=turns, agent_session_id=texts,
                                  project_key=texts, entry_count=st.integers(0, 10**6),
                                  reason=texts),
    AgentProcessStarted: st.builds(AgentProcessStarted, pid=st.integers(1, 2**22),
                                   argv=st.tuples(texts, texts), turn=st.none() | turns,
                                   reason=texts, host=texts),
    AgentProcessStopped: st.builds(AgentProcessStopped, pid=st.integers(1, 2**22), reason=texts,
                                   exit_code=st.none() | st.integers(-64, 255),
                                   turns=st.integers(0, 10**4),
                                   process_cost_usd=st.none() | finite),
    PermissionRequested: st.builds(PermissionRequested, turn=turns, request_id=texts,
                                   tool=texts, input=json_values, tool_use_id=texts),
    PermissionDecided: st.builds(PermissionDecided, turn=turns, request_id=texts,
                                 allow=st.booleans(), message=texts,
                                 decided_by=st.none() | texts),
    ColdRunChosen: st.builds(ColdRunChosen, turn=turns, reason=texts, message=texts,
                                 argv=st.tuples(texts)),
    TranscriptReseeded: st.builds(TranscriptReseeded, turn=turns, agent_session_id=texts,
                                  missing_turns=st.tuples(turns, turns), method=texts,
                                  prompt_digest=texts),
    TranscriptDeleted: st.builds(TranscriptDeleted, project_key=texts, agent_session_id=texts,
                                 subpath=st.none() | texts, reason=texts),
    SessionTitled: st.builds(SessionTitled, title=texts,
                             source=st.sampled_from(["caller", "first_message"])),
    SessionTagged: st.builds(SessionTagged, added=st.lists(texts, max_size=3).map(tuple),
                             removed=st.lists(texts, max_size=3).map(tuple)),
    SessionArchived: st.builds(SessionArchived),
    SessionUnarchived: st.builds(SessionUnarchived),
    BudgetSet: st.builds(BudgetSet, owner=st.none() | texts, usd=st.none() | finite,
                         tokens=st.none() | st.integers(0, 10**9)),
    TurnRefused: st.builds(TurnRefused, scope=st.sampled_from(["session", "owner"]),
                           message=texts, spent_usd=finite, spent_tokens=st.integers(0, 10**9),
                           cap_usd=st.none() | finite, cap_tokens=st.none() | st.integers(0, 10**12)),
    InterruptRequested: st.builds(InterruptRequested, turn=turns, requested_by=texts, host=texts,
                                  pid=st.integers(0, 2**22)),
    ForkedFrom: st.builds(ForkedFrom, parent_session_id=texts, parent_version=turns,
                          parent_hash=texts, parent_position=turns,
                          agent_session_id=st.none() | texts, agent_note=texts),
    HeadCheckpointed: st.builds(HeadCheckpointed, position=turns, hash=texts, signed_at=texts,
                                key=texts, public_key=texts, signature=texts,
                                trigger=st.sampled_from(["on_demand", "periodic"])),
    Redacted: st.builds(Redacted, version=st.integers(1, 10**6), position=st.integers(1, 10**9),
                        event_type=texts, commitment=st.binary(min_size=32, max_size=32),
                        reason=texts, redacted_by=st.none() | texts),
}
any_event = st.one_of(*EVENT_STRATEGIES.values())


def test_every_event_type_has_a_strategy() -> None:
    assert set(EVENT_STRATEGIES) == set(EVENT_TYPES)


@settings(max_examples=300)
@given(any_event)
def test_every_event_round_trips_through_the_codec(event: object) -> None:
    assert decode_event(encode_event(event)) == event  # type: ignore[arg-type]


@settings(max_examples=200)
@given(any_event)
def test_every_event_round_trips_through_json_builtins(event: object) -> None:
    data = event_to_builtins(event)  # type: ignore[arg-type]
    assert event_from_builtins(msgspec.json.decode(msgspec.json.encode(data))) == event


@settings(max_examples=100)
@given(any_event, st.integers(1, 2**40), st.integers(1, 2**20))
def test_records_round_trip_with_their_envelope(event: object, position: int, version: int) -> None:
    envelope = StoredEnvelope(
        position=position, session_id="s", version=version,
        recorded_at=datetime(2026, 1, 1, tzinfo=timezone.utc), schema_version=SCHEMA_VERSION,
        prev_session_hash=b"\x01" * 32, prev_log_hash=b"\x02" * 32,
        event=msgspec.Raw(encode_event(event)),  # type: ignore[arg-type]
    )
    recorded = decode_record(encode_record(envelope))
    assert recorded.event == event
    assert (recorded.position, recorded.version) == (position, version)
    assert recorded.recorded_at.tzinfo is not None


def test_events_take_keyword_arguments_named_as_in_the_design() -> None:
    assert MessageSent(turn=1, text="hi", canvas_state=None).text == "hi"
    assert ModeSwitched(from_mode="user", to_mode="power").to_mode == "power"
    with pytest.raises(TypeError):
        MessageSent(1, "hi")  # type: ignore[misc]


def test_events_are_frozen() -> None:
    event = MessageSent(turn=1, text="hi")
    with pytest.raises(AttributeError):
        event.text = "changed"  # type: ignore[misc]


def test_unknown_tag_decodes_to_a_verbatim_placeholder_and_survives_a_round_trip() -> None:
    raw = msgspec.msgpack.encode({"type": "reaction_added", "turn": 3, "emoji": "+1"})
    event = decode_event(raw)
    assert isinstance(event, UnknownEvent)
    assert event.type == "reaction_added"
    assert event.fields == {"turn": 3, "emoji": "+1"}
    assert encode_event(event) == raw


def test_unknown_events_are_stored_and_read_back_unchanged(log: EventLog) -> None:
    raw = msgspec.msgpack.encode({"type": "from_the_future", "x": [1, 2]})
    future = decode_event(raw)
    log.append("s", [SessionCreated(), future], expected_version=0)
    stored = log.read_session("s")[1].event
    assert isinstance(stored, UnknownEvent) and stored.raw == raw
    assert log.verify().ok


def test_v1_shapes_are_upcast() -> None:
    raw = msgspec.msgpack.encode({"type": "mode_switched", "old": "user", "new": "power"})
    assert decode_event(raw, schema_version=1) == ModeSwitched(from_mode="user", to_mode="power")
    raw = msgspec.msgpack.encode(
        {"type": "response_received", "turn": 2, "text": "ok", "duration_ms": 2500, "cost": 0.5}
    )
    event = decode_event(raw, schema_version=1)
    assert isinstance(event, ResponseReceived)
    assert (event.duration, event.cost_usd) == (2.5, 0.5)


def test_the_v1_fixture_ledger_always_loads(tmp_path: Path) -> None:
    copy = tmp_path / "ledger-v1"
    shutil.copytree(FIXTURE, copy)
    with EventLog(copy) as log:
        assert log.verify().ok
        records = log.read_session("v1-session")
        assert [r.schema_version for r in records] == [1] * 5
        response = records[3].event
        assert isinstance(response, ResponseReceived)
        assert response.duration == 1.5 and response.cost_usd == 0.0125
        assert response.agent_session_id == "agent-abc"
        assert records[4].event == ModeSwitched(from_mode="user", to_mode="power")
        info = session_info("v1-session", records)
        assert (info.mode, info.study_id, info.message_count) == ("power", "study-7", 2)
        assert info == log.info("v1-session")
        assert [m.role for m in history(records)] == ["user", "assistant"]
        # New appends go on in the current schema after the old records.
        log.append("v1-session", [MessageSent(turn=2, text="more")], expected_version=5)
        assert log.read_session("v1-session")[-1].schema_version == SCHEMA_VERSION
        assert log.verify().ok
