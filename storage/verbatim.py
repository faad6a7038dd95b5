"""Verbatim appends (a faithful import): check that stored records continue a log as they are.

Pure: given the head, the records' bytes and a way to look up a session's index entry, it
decides what a store must write (the same bytes, the index entries, the new head) or why it
must write nothing. Every store calls it inside its own write transaction or lock.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from ..errors import ChatledgerError, ConcurrencyError
from ..events.model import Recorded
from ..events.projections import ProjectionError, SessionInfo, evolve
from .hashing import CONTENT_ALTERED, GENESIS, Head, examine_record
from .records import IndexEntry


class LogMovedError(ConcurrencyError):
    """Verbatim records do not continue the log where it ends now; nothing was written."""

    def __init__(self, head_position: int, first_position: int) -> None:
        ChatledgerError.__init__(
            self,
            f"the log ends at position {head_position}, but the records start at "
            f"{first_position} (or link elsewhere): they do not continue this ledger",
        )
        self.session_id = ""
        self.expected = first_position - 1
        self.actual = head_position


class VerbatimWrite(msgspec.Struct, frozen=True):
    """What a verbatim append writes: each record with its hash, the index entries, the head."""

    values: list[tuple[Recorded, bytes]]  # (decoded record, stored hash + record bytes)
    entries: dict[str, IndexEntry]
    head: Head


def plan_verbatim(
    head: Head,
    records: list[bytes],
    decoded: list[Recorded],
    index_entry: Callable[[str], IndexEntry | None],
) -> VerbatimWrite | Exception:
    """The write that appends `records` as they are after `head`, or the error (returned, not
    raised, so a group-commit writer can answer it and still commit the rest of its batch)."""
    first = decoded[0]
    if first.position != head.position + 1 or first.prev_log_hash != head.hash:
        return LogMovedError(head.position, first.position)
    entries: dict[str, IndexEntry] = {}
    values: list[tuple[Recorded, bytes]] = []
    log_hash = head.hash
    for offset, recorded in enumerate(decoded):
        position = head.position + 1 + offset
        if recorded.position != position or recorded.prev_log_hash != log_hash:
            return ValueError(f"record {offset + 1} does not follow the one before it")
        session_id = recorded.session_id
        entry = entries.get(session_id) or index_entry(session_id)
        info = entry.info if entry is not None else SessionInfo(session_id=session_id)
        last_hash = entry.last_hash if entry is not None else GENESIS
        if recorded.prev_session_hash != last_hash:
            return ValueError(
                f"record at {position} does not link to the last record of {session_id!r}"
            )
        try:
            info = evolve(info, recorded)
        except ProjectionError as error:
            return ValueError(f"record at {position}: {error}")
        try:
            digest, content = examine_record(records[offset])
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            return ValueError(f"record at {position} does not decode: {error}")
        if content == CONTENT_ALTERED:
            return ValueError(f"record at {position}: its content does not match its commitment")
        entries[session_id] = IndexEntry(info=info, last_hash=digest)
        values.append((recorded, digest + records[offset]))
        log_hash = digest
    return VerbatimWrite(values=values, entries=entries, head=Head(decoded[-1].position, log_hash))
