"""The fast paths behave exactly like the straightforward code they replaced.

`evolve` dispatches by event type with one `replace` per record (it used to build a dict of
changes and test isinstance in a chain); the reference fold below is that older code, kept
here as the specification. Live session actors keep only a conversation tail, so their
prompts must still show the same last messages. No speed is asserted anywhere.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec

from chatledger.events import (
    AgentSessionLost,
    CanvasModified,
    MessageSent,
    ModeSwitched,
    Recorded,
    ResponseReceived,
    RunFailed,
    RunStarted,
    SessionCreated,
    SessionExpired,
    SessionInfo,
    SessionResumed,
    StudyContextSet,
    evolve,
)
from chatledger.events.model import UnknownEvent
from chatledger.events.projections import (
    STATUS_EXPIRED,
    STATUS_IDLE,
    STATUS_NEW,
    STATUS_RUNNING,
)


def reference_evolve(info: SessionInfo, recorded: Recorded) -> SessionInfo:
    """The fold as first written: a dict of changes, isinstance tests, one replace."""
    assert recorded.version == info.version + 1
    event = recorded.event
    changes: dict[str, Any] = {
        "version": recorded.version,
        "last_position": recorded.position,
        "last_active": recorded.recorded_at,
    }
    if isinstance(event, SessionCreated):
        changes.update(mode=event.mode, study_id=event.study_id,
                       created_at=recorded.recorded_at, status=STATUS_IDLE)
    elif isinstance(event, SessionResumed):
        if info.status == STATUS_NEW:
            changes.update(created_at=recorded.recorded_at, status=STATUS_IDLE)
        elif info.status == STATUS_EXPIRED:
            changes["status"] = STATUS_IDLE
    elif isinstance(event, StudyContextSet):
        changes["study_id"] = event.study_id
    elif isinstance(event, ModeSwitched):
        changes["mode"] = event.to_mode
    elif isinstance(event, MessageSent):
        changes.update(message_count=info.message_count + 1,
                       turn_count=max(info.turn_count, event.turn))
    elif isinstance(event, RunStarted):
        changes.update(status=STATUS_RUNNING, open_turn=event.turn)
    elif isinstance(event, ResponseReceived):
        changes.update(status=STATUS_IDLE, open_turn=None,
                       message_count=info.message_count + 1,
                       total_cost_usd=info.total_cost_usd + (event.cost_usd or 0.0),
                       agent_session_id=event.agent_session_id or info.agent_session_id,
                       last_error=None)
    elif isinstance(event, RunFailed):
        changes.update(status=STATUS_IDLE, open_turn=None,
                       last_error=f"{event.reason}: {event.message}" if event.message
                       else event.reason,
                       failure_count=info.failure_count + 1)
    elif isinstance(event, AgentSessionLost):
        changes["agent_session_id"] = None
    elif isinstance(event, SessionExpired):
        changes.update(status=STATUS_EXPIRED, open_turn=None)
    return msgspec.structs.replace(info, **changes)


def random_event(rng: random.Random, turn: int) -> Any:
    choice = rng.randrange(12)
    if choice == 0:
        return SessionCreated(mode=rng.choice(["user", "power"]),
                              study_id=rng.choice([None, "s1", "s2"]))
    if choice == 1:
        return SessionResumed()
    if choice == 2:
        return StudyContextSet(study_id=rng.choice([None, "s3"]))
    if choice == 3:
        return ModeSwitched(from_mode="user", to_mode=rng.choice(["user", "power"]))
    if choice == 4:
        return MessageSent(turn=turn, text="hello")
    if choice == 5:
        return RunStarted(turn=turn)
    if choice == 6:
        return ResponseReceived(turn=turn, text="answer", cost_usd=rng.choice([None, 0.5]),
                                agent_session_id=rng.choice([None, "agent-1"]))
    if choice == 7:
        return RunFailed(turn=turn, reason="timeout", message=rng.choice(["", "slow"]))
    if choice == 8:
        return AgentSessionLost(turn=turn, agent_session_id="agent-1")
    if choice == 9:
        return SessionExpired(idle_seconds=5.0)
    if choice == 10:
        return CanvasModified(turn=turn, modification={"x": 1})
    return UnknownEvent(type="from_the_future", fields={}, raw=b"\x80")


def test_evolve_matches_the_reference_fold_on_random_streams() -> None:
    rng = random.Random(2024)
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    for stream in range(200):
        fast = reference = SessionInfo(session_id=f"s{stream}")
        for version in range(1, 40):
            recorded = Recorded(
                position=stream * 100 + version,
                session_id=f"s{stream}",
                version=version,
                recorded_at=start + timedelta(seconds=version),
                schema_version=2,
                prev_session_hash=b"",
                prev_log_hash=b"",
                event=random_event(rng, turn=version // 3 + 1),
            )
            fast = evolve(fast, recorded)
            reference = reference_evolve(reference, recorded)
            assert fast == reference


def test_live_session_prompts_show_the_same_last_messages_before_and_after_passivation(
    tmp_path: Any,
) -> None:
    import sys

    from chatledger.ledger import Ledger

    standin = (sys.executable, "-m", "chatledger.agent.standin")
    with Ledger(str(tmp_path / "ledger"), agent_command=standin, timeout=30,
                history_window=3) as ledger:
        session_id = ledger.create_session().session_id
        for number in range(3):
            assert ledger.send(session_id, f"message {number}").ok
        live = ledger.send(session_id, "[[prompt]] first").text
        assert ledger.passivate(session_id)
        reactivated = ledger.send(session_id, "[[prompt]] second").text
    # The last three messages of the conversation, as a full replay would give them.
    assert ("## Conversation so far\nassistant: echo: message 1\n\nuser: message 2\n\n"
            "assistant: echo: message 2\n\n## Canvas state") in live
    assert ("## Conversation so far\nassistant: echo: message 2\n\nuser: [[prompt]] first\n\n"
            "assistant: You are working") in reactivated
