"""For tests that choreograph the PostgreSQL writer's batches: which sessions each batch held,
and callers that append to their session twice."""

from __future__ import annotations

import threading
from typing import Any

from chatledger.events import MessageSent


def record_batches(writer: Any) -> list[list[str]]:
    """From now on, the sorted sessions of every batch `writer` (an AppendWriter) writes, in
    the order it writes them."""
    batches: list[list[str]] = []
    write_batch = writer._write_batch

    def recorded(batch: list[Any], place: Any) -> Any:
        batches.append(sorted(append.session_id for request in batch
                              for append in request.appends))
        return write_batch(batch, place)

    writer._write_batch = recorded
    return batches


def appending_twice(store: Any, session_id: str) -> threading.Thread:
    """A thread (not started) appending two messages to a session that is at version 1."""
    def twice() -> None:
        store.append(session_id, [MessageSent(turn=1, text="first")], 1)
        store.append(session_id, [MessageSent(turn=1, text="second")], 2)

    return threading.Thread(target=twice)
