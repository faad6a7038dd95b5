"""How a live session comes back from the log: its indexed info plus the tail of its stream
that its next prompt needs, and whether an open turn's run still has a live owner.

Reads the store (short reads, no transaction kept) and looks at processes on this host; it
appends nothing.
"""

from __future__ import annotations

import os
import socket

from ..events import MessageSent, ModeSwitched, Recorded, RunStarted, SessionInfo, conversation
from ..storage import EventStore

HOST = socket.gethostname()
"""This host's name, recorded in RunStarted so another process can tell whose run it is."""


def owner_is_elsewhere_and_alive(started: RunStarted) -> bool:
    """Whether another live process on this host still runs this turn."""
    if started.host != HOST or started.pid in (0, os.getpid()):
        return False
    try:
        os.kill(started.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_recent(log: EventStore, session_id: str, window: int) -> tuple[SessionInfo, list[Recorded]]:
    """A session's info and the tail of its stream a live session keeps: whole turns holding
    its last `window` conversation messages and its last RunStarted.

    The info comes from the session index, which the writer updates in the same transaction
    as the stream, so a long session comes back to life in time proportional to the window,
    not to its length. The tail is read again, four times longer, until it is enough.
    """
    count = 4 * window + 8
    while True:
        info, records = log.latest(session_id, count)
        if info is None:
            return SessionInfo(session_id=session_id), []
        if not records or records[0].version == 1:  # the whole stream
            return info, records
        starts = [index for index, recorded in enumerate(records)
                  if isinstance(recorded.event, MessageSent)]
        if starts:
            tail = records[starts[0]:]
            if len(conversation(tail)) >= window and any(
                isinstance(recorded.event, RunStarted) for recorded in tail
            ):
                return info, tail
        count *= 4


def mode_before(records: list[Recorded], mode_now: str) -> str:
    """The session's mode before `records`, given its mode after them."""
    for recorded in records:
        if isinstance(recorded.event, ModeSwitched):
            return recorded.event.from_mode
    return mode_now
