"""What a fork copies of its parent: the conversation and its settings, not the parent's
lifecycle (resumed, expired, archived) nor its agent's bookkeeping (processes, restores, lost
sessions), and a copied answer without its cost, usage and agent session id (spend belongs to
the parent; counting it twice would break spend caps and reports). Pure: used when a fork is
made (`actors/fork.py`) and when verify compares a fork with its parent (`audit/lineage.py`).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from .model import (
    AgentProcessStarted,
    AgentProcessStopped,
    AgentSessionLost,
    Event,
    ForkedFrom,
    HeadCheckpointed,
    Recorded,
    ResponseReceived,
    SessionArchived,
    SessionExpired,
    SessionResumed,
    SessionUnarchived,
    TranscriptRestored,
    UnknownEvent,
)

NOT_COPIED: tuple[type, ...] = (
    ForkedFrom,  # a fork of a fork names its own parent; the lineage chains through it
    SessionResumed,
    SessionExpired,
    SessionArchived,
    SessionUnarchived,
    AgentSessionLost,
    AgentProcessStarted,
    AgentProcessStopped,
    TranscriptRestored,
    HeadCheckpointed,
)
"""Parent events a fork does not copy: the parent's lifecycle and its agent's bookkeeping."""

AnyRecordedEvent = Event | UnknownEvent


def fork_copy(event: AnyRecordedEvent) -> AnyRecordedEvent | None:
    """The copy of one parent event a fork records, or None when it is not copied. An
    answer's copy has no cost, usage or agent session id; every other copy is the event."""
    if isinstance(event, NOT_COPIED):
        return None
    if isinstance(event, ResponseReceived):
        return msgspec.structs.replace(event, cost_usd=None, usage=None,
                                       process_cost_usd=None, agent_session_id=None)
    return event


def fork_copies(records: Iterable[Recorded]) -> list[AnyRecordedEvent]:
    """The copies a fork records of the parent's records (in order)."""
    copies: list[AnyRecordedEvent] = []
    for recorded in records:
        copy = fork_copy(recorded.event)
        if copy is not None:
            copies.append(copy)
    return copies
