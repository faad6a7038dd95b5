"""An actor comes back to life from the session index and a tail of its stream: the state it
keeps must be exactly what folding the whole stream gives, for any session and window."""

from __future__ import annotations

import random
import uuid

import pytest

from chatledger.actors.rehydration import load_recent, mode_before
from chatledger.errors import LedgerError
from chatledger.events import (
    CanvasModified,
    Event,
    MessageSent,
    ModeSwitched,
    ResponseReceived,
    RunFailed,
    RunStarted,
    SessionCreated,
    StudyContextSet,
    ToolCall,
)
from chatledger.events.projections import conversation, session_info
from chatledger.storage import EventLog


def random_session(rng: random.Random, turns: int) -> list[list[Event]]:
    """The appends of a session as actors make them: one batch per command or outcome."""
    mode = rng.choice(["user", "power"])
    batches: list[list[Event]] = [[SessionCreated(mode=mode)]]
    for turn in range(1, turns + 1):
        if rng.random() < 0.15:
            new_mode = "power" if mode == "user" else "user"
            batches.append([ModeSwitched(from_mode=mode, to_mode=new_mode)])
            mode = new_mode
        if rng.random() < 0.05:
            batches.append([StudyContextSet(study_id=f"study-{turn}")])
        batches.append([
            MessageSent(turn=turn, text=f"message {turn}", canvas_state={"turn": turn}),
            RunStarted(turn=turn, argv=("agent", str(turn)), pid=turn),
        ])
        modifications: list[Event] = [
            CanvasModified(turn=turn, modification={"op": index})
            for index in range(rng.choice([0, 0, 1, 3]))
        ]
        if rng.random() < 0.2:
            batches.append([*modifications, RunFailed(turn=turn, reason="timeout")])
        else:
            batches.append([*modifications, ResponseReceived(
                turn=turn, text=f"answer {turn}",
                tool_calls=(ToolCall(name="Read", input={"n": turn}),),
                cost_usd=0.01, agent_session_id=f"agent-{turn}",
            )])
    if rng.random() < 0.3:  # a turn left open by a process that died
        batches.append([MessageSent(turn=turns + 1, text="open"),
                        RunStarted(turn=turns + 1, pid=1)])
    return batches


def write(log: EventLog, batches: list[list[Event]]) -> str:
    session_id = str(uuid.uuid4())
    version = 0
    for batch in batches:
        version += len(log.append(session_id, batch, version))
    return session_id


@pytest.mark.parametrize("seed", range(12))
def test_tail_state_equals_the_full_fold(log: EventLog, seed: int) -> None:
    rng = random.Random(seed)
    session_id = write(log, random_session(rng, turns=rng.choice([0, 1, 2, 5, 40, 150])))
    records = log.read_session(session_id)
    for window in (0, 1, 2, 3, 10, 25):
        info, tail = load_recent(log, session_id, window)
        assert info == session_info(session_id, records)
        assert tail == records[len(records) - len(tail):]
        kept = conversation(tail, mode_before(tail, info.mode))
        if window:
            assert kept[-window:] == conversation(records)[-window:]
        last_started = [r.event for r in records if isinstance(r.event, RunStarted)]
        tail_started = [r.event for r in tail if isinstance(r.event, RunStarted)]
        assert tail_started[-1:] == last_started[-1:]


def test_a_long_session_comes_back_from_a_short_tail(log: EventLog) -> None:
    session_id = write(log, random_session(random.Random(1), turns=500))
    info, tail = load_recent(log, session_id, window=10)
    assert info.version > 1500
    assert len(tail) < 100


def test_an_unknown_session_has_no_state(log: EventLog) -> None:
    info, tail = load_recent(log, str(uuid.uuid4()), window=10)
    assert info.version == 0 and tail == []


def test_a_stream_index_that_disagrees_with_the_session_index_is_reported(log: EventLog) -> None:
    session_id = write(log, random_session(random.Random(2), turns=30))
    store = log.store
    prefix = session_id.encode() + b"\x00"

    def drop_last_stream_key(txn: object) -> None:
        cursor = txn.cursor(db=store.streams_db)  # type: ignore[attr-defined]
        cursor.set_range(prefix + (10**6).to_bytes(8, "big"))
        cursor.prev()
        assert bytes(cursor.key()).startswith(prefix)
        cursor.delete()

    log.run_in_writer(drop_last_stream_key)
    with pytest.raises(LedgerError, match="does not match its index entry"):
        load_recent(log, session_id, window=3)
    with pytest.raises(LedgerError, match="does not match its index entry"):
        log.read_session(session_id)
    # An audit follows the stream index alone, and so sees what is there.
    assert len(log.read_session_raw(session_id)) == log.version(session_id) - 1
