"""Forks: a new session that starts from another session's history at a version, with lineage.

A fork's stream is `ForkedFrom` (the parent, the version, that record's hash) followed by
copies of the parent's events up to and including that version, all appended in one atomic
append, so the fork is a session like any other: its info, history, replay, export, verify
and prompts read its own stream and nothing else. What is copied is the conversation and its
settings; the parent's lifecycle (resumed, expired, archived), its agent processes and
transcript restores are not, and a copied answer carries no cost, usage or agent session id
(spend belongs to the parent: counting it twice would break spend caps and reports). The
copies are recorded at the fork's time (a stream's times never go backwards, and a fork is
new activity); the original times stay in the parent, which `ForkedFrom` names.

A fork at a version inside a turn (its `MessageSent` recorded, its outcome not yet) is
refused: the error names the versions before and after that turn.

The agent side: with the resume strategy the fork's first turn resumes the parent's agent
session with `--fork-session` (the agent then names a new session, which the fork keeps), so
the agent's own memory forks too. That is only honest while the parent's agent session holds
nothing after the fork's version: when the parent went on in it later (a fork before the
parent's last turn), `ForkedFrom.agent_session_id` is None and the fork sends prompt history
instead, and `agent_note` says why. Whether the parent went on meanwhile is checked again
before the fork's first turn (`parent_went_on`).

This module decides and appends; it starts no actor and no process.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from ..errors import (
    ConcurrencyError,
    InvalidCommandError,
    InvalidSessionIdError,
    UnknownSessionError,
)
from ..events import Recorded, SessionInfo, session_info
from ..events.forks import AnyRecordedEvent, fork_copies
from ..events.model import (
    AgentSessionLost,
    ForkedFrom,
    MessageSent,
    ResponseReceived,
    RunFailed,
    RunStarted,
)
from ..events.system import is_reserved
from ..storage import AuditStore, EventStore, SessionAppend, record_hash, validate_session_id
from ..storage.hashing import HASH_SIZE
from .turn import RESUMABLE_AGENT_SESSION_ID


def parent_went_on(later: Iterable[Recorded], agent_session_id: str) -> str | None:
    """Why the parent's agent session no longer ends where the fork was made (a later turn of
    the parent resumed it, ran in it, or answered from it), or None when nothing did."""
    for recorded in later:
        event = recorded.event
        if isinstance(event, RunStarted) and (
            event.resume_agent_session_id == agent_session_id
            or event.history_strategy == "live"
        ):
            return (f"the parent's turn {event.turn} (version {recorded.version}) went on "
                    f"in agent session {agent_session_id}")
        if isinstance(event, ResponseReceived) and event.agent_session_id == agent_session_id:
            return (f"the parent's turn {event.turn} (version {recorded.version}) answered "
                    f"from agent session {agent_session_id}")
    return None


def _is_turn_end(event: AnyRecordedEvent, turn: int) -> bool:
    return isinstance(event, (ResponseReceived, RunFailed)) and event.turn == turn


def _check_not_mid_turn(session_id: str, records: Sequence[Recorded], at_version: int) -> None:
    """Refuse a version inside a turn: after its MessageSent, before its outcome."""
    upto = records[:at_version]
    sent = next((recorded for recorded in reversed(upto)
                 if isinstance(recorded.event, MessageSent)), None)
    if sent is None:
        return
    turn = sent.event.turn
    if any(_is_turn_end(recorded.event, turn) for recorded in upto[sent.version:]):
        return
    end = next((recorded.version for recorded in records[at_version:]
                if _is_turn_end(recorded.event, turn)), None)
    after = f" or at version {end} (after it)" if end is not None else \
        " (the turn has not ended yet)"
    raise InvalidCommandError(
        f"version {at_version} of session {session_id} is inside turn {turn}: fork at "
        f"version {sent.version - 1} (before the turn){after}"
    )


def plan_fork(
    parent_id: str,
    records: Sequence[Recorded],
    parent_hash: bytes,
    at_version: int,
) -> list[AnyRecordedEvent]:
    """The events of a fork of `parent_id` at `at_version`: ForkedFrom, then the copies.
    `records` is the parent's whole stream as read, `parent_hash` the hash of its record at
    `at_version`. InvalidCommandError for a version out of range or inside a turn."""
    last = len(records)
    if isinstance(at_version, bool) or not isinstance(at_version, int) \
            or not 1 <= at_version <= last:
        raise InvalidCommandError(
            f"version {at_version!r} is out of range: session {parent_id} has versions 1 to "
            f"{last}"
        )
    _check_not_mid_turn(parent_id, records, at_version)
    upto, later = records[:at_version], records[at_version:]
    info = session_info(parent_id, upto)
    agent_id = info.agent_session_id
    note = ""
    if agent_id is None:
        note = "the parent had no agent session at that version: the fork sends prompt history"
    elif not RESUMABLE_AGENT_SESSION_ID.fullmatch(agent_id):
        note = "the parent's agent session id cannot be resumed: the fork sends prompt history"
        agent_id = None
    else:
        went_on = parent_went_on(later, agent_id)
        if went_on is not None:
            note = (f"{went_on} after the fork's version, so it holds later turns: the fork "
                    "sends prompt history")
            agent_id = None
        else:
            note = (f"with the resume strategy, the fork's first turn resumes agent session "
                    f"{agent_id} with --fork-session")
    forked = ForkedFrom(
        parent_session_id=parent_id, parent_version=at_version, parent_hash=parent_hash.hex(),
        parent_position=upto[-1].position, agent_session_id=agent_id, agent_note=note,
    )
    return [forked, *fork_copies(upto)]


def check_fork_id(session_id: str) -> str:
    """A usable id for a new fork: a valid session id, not a reserved one."""
    validate_session_id(session_id)
    if is_reserved(session_id):
        raise InvalidSessionIdError(
            f"session id {session_id[:40]!r} is reserved: ids starting with '~' are "
            "chatledger's own streams"
        )
    return session_id


def fork_session(
    log: AuditStore, session_id: str, at_version: int, new_session_id: str | None = None
) -> SessionInfo:
    """Fork `session_id` at `at_version` into a new session (a uuid4 id unless one is given),
    in one atomic append; returns the fork's info. UnknownSessionError for an unknown parent,
    InvalidSessionIdError for a bad or reserved new id, InvalidCommandError for a version out
    of range or inside a turn, a new id already taken, or a parent record that fails its hash."""
    validate_session_id(session_id)
    if is_reserved(session_id):
        raise InvalidCommandError(f"{session_id} is one of chatledger's own streams, not a "
                                  "session: it cannot be forked")
    fork_id = check_fork_id(new_session_id if new_session_id is not None else str(uuid.uuid4()))
    if fork_id == session_id or log.info(fork_id) is not None:
        raise InvalidCommandError(f"session {fork_id} already exists: choose another id")
    records = log.read_session(session_id)
    if not records:
        raise UnknownSessionError.for_session(session_id)
    parent_hash = _parent_record_hash(log, session_id, at_version, len(records))
    events = plan_fork(session_id, records, parent_hash, at_version)
    try:
        log.append_atomically([SessionAppend(fork_id, events, 0)])
    except ConcurrencyError:
        raise InvalidCommandError(
            f"session {fork_id} already exists (it was created meanwhile): choose another id"
        ) from None
    return log.require_info(fork_id)


def _parent_record_hash(log: AuditStore, session_id: str, at_version: int, last: int) -> bytes:
    """The hash of the parent's record at `at_version` (recomputed: a record that fails its
    stored hash is refused); the range is checked by `plan_fork`."""
    if isinstance(at_version, bool) or not isinstance(at_version, int) \
            or not 1 <= at_version <= last:
        return b""
    stored = log.read_session_raw(session_id, from_version=at_version)
    if not stored:
        return b""
    value = bytes(stored[0][1])
    digest = record_hash(value[HASH_SIZE:])
    if digest != value[:HASH_SIZE]:
        raise InvalidCommandError(
            f"the record at version {at_version} of session {session_id} fails its hash: "
            f"run `chatledger verify {session_id}` before forking it"
        )
    return digest


def stale_fork_agent_session(log: EventStore, info: SessionInfo, turn: int) -> AgentSessionLost | None:
    """Before a fork's turn that would resume its parent's agent session with
    `--fork-session`: `AgentSessionLost` (the turn then sends prompt history) if the parent
    went on in that agent session since the fork was made, else None. Reads the parent's
    stream after the fork's version (a short read)."""
    agent_id = info.fork_agent_session_id
    if agent_id is None or info.agent_session_id is not None or info.forked_from is None:
        return None
    later = log.read_session(info.forked_from, from_version=info.forked_at_version + 1)
    went_on = parent_went_on(later, agent_id)
    if went_on is None:
        return None
    return AgentSessionLost(turn=turn, agent_session_id=agent_id,
                            message=f"not forked: {went_on} after this fork was made, so it "
                            "holds later turns; this turn sends prompt history")
