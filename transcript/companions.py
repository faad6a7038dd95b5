"""Which ledger sessions hold the agent transcripts mirrored during a chatledger session.

A chatledger turn run with the transcript mirror keeps claude's entries in the session the
Agent SDK store names for that transcript (`sdk_<project>_<agent session>`, plus one per
subagent transcript), each event tied to the turn's session by `turn_session_id`. Exporting
a chatledger session should carry those along: `with_transcripts` adds them. It only reads
the session index and the candidates' streams; it writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..events import ResponseReceived, RunStarted, TranscriptEntriesAppended, TranscriptRestored
from ..sdk_store.keys import PREFIX, session_part
from ..storage import EventStore


def _agent_sessions(log: EventStore, session_id: str) -> set[str]:
    """The agent session ids a chatledger session's records name."""
    named: set[str] = set()
    for recorded in log.read_session(session_id):
        event = recorded.event
        if isinstance(event, ResponseReceived) and event.agent_session_id:
            named.add(event.agent_session_id)
        elif isinstance(event, RunStarted) and event.resume_agent_session_id:
            named.add(event.resume_agent_session_id)
        elif isinstance(event, TranscriptRestored):
            named.add(event.agent_session_id)
    return named


def transcript_sessions(log: EventStore, session_id: str) -> list[str]:
    """The ledger sessions holding transcripts mirrored during `session_id`'s turns, sorted."""
    if session_id.startswith(PREFIX + "_"):
        return []
    parts = {session_part(agent) for agent in _agent_sessions(log, session_id)}
    if not parts:
        return []
    found = []
    for info in log.sessions():
        pieces = info.session_id.split("_")
        if pieces[0] != PREFIX or len(pieces) not in (3, 4) or pieces[2] not in parts:
            continue
        if any(isinstance(recorded.event, TranscriptEntriesAppended)
               and recorded.event.turn_session_id == session_id
               for recorded in log.read_session(info.session_id)):
            found.append(info.session_id)
    return sorted(found)


def with_transcripts(log: EventStore, session_ids: Iterable[str]) -> list[str]:
    """`session_ids`, each followed by its mirrored transcript sessions (none twice)."""
    chosen: list[str] = []
    for session_id in session_ids:
        for wanted in (session_id, *transcript_sessions(log, session_id)):
            if wanted not in chosen:
                chosen.append(wanted)
    return chosen
