"""Time travel for readers: a session as it was at a version, an unfinished turn included.

The history fold shows a turn's canvas changes with its answer; at a version in the middle
of a turn there is no answer yet, so `replay_history` adds one `running` entry holding what
that turn had recorded by then (its canvas changes). Pure: it folds the records it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..events.model import (
    CanvasModified,
    MessageSent,
    ModeSwitched,
    Recorded,
    ResponseReceived,
    RunFailed,
    SessionCreated,
)
from ..events.projections import HistoryMessage, history

ROLE_RUNNING = "running"
"""The history role of a turn still open at the version replayed."""


def open_turn(records: Sequence[Recorded]) -> int | None:
    """The turn that was still running after the last of `records` (None if none was)."""
    turn: int | None = None
    for recorded in records:
        event = recorded.event
        if isinstance(event, MessageSent):
            turn = event.turn
        elif isinstance(event, (ResponseReceived, RunFailed)) and event.turn == turn:
            turn = None
    return turn


def replay_history(records: Sequence[Recorded]) -> list[HistoryMessage]:
    """The conversation up to the last record, with an entry for a turn still running."""
    messages = history(records)
    turn = open_turn(records)
    if turn is None or not records:
        return messages
    mode = "user"
    changes: list[Any] = []
    for recorded in records:
        event = recorded.event
        if isinstance(event, SessionCreated):
            mode = event.mode
        elif isinstance(event, ModeSwitched):
            mode = event.to_mode
        elif isinstance(event, CanvasModified) and event.turn == turn:
            changes.append(event.modification)
    messages.append(
        HistoryMessage(
            role=ROLE_RUNNING,
            content=f"(turn {turn} was still running at version {records[-1].version})",
            timestamp=records[-1].recorded_at,
            turn=turn,
            canvas_modifications=tuple(changes),
            mode=mode,
        )
    )
    return messages
