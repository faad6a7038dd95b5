"""Verification of a ledger: both hash chains, the stream index and the session index.

`verify_log` walks the log once, recomputing every record's hash, checking the links to the
previous record of the log and of the session, the versions, the stream index and the session
index (by folding every event), and the stored head; a saved head catches truncation. It reads
only, in short transactions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from ..events.codec import decode_record
from ..events.projections import ProjectionError, SessionInfo, evolve
from .hashing import GENESIS, HASH_SIZE, Head, record_hash

if TYPE_CHECKING:
    from .lmdb_log import EventLog

MAX_PROBLEMS = 20


class VerifyReport(msgspec.Struct, kw_only=True):
    """What `verify` found: ok, how much it checked, and the first bad position and why."""

    ok: bool = True
    records_checked: int = 0
    sessions_checked: int = 0
    first_bad_position: int | None = None
    reason: str | None = None
    problems: list[str] = msgspec.field(default_factory=list)
    head: Head = msgspec.field(default_factory=lambda: Head(0, GENESIS))

    def fail(self, position: int | None, reason: str) -> None:
        """Record a problem; the first one becomes the report's verdict."""
        if self.ok:
            self.ok = False
            self.first_bad_position = position
            self.reason = reason
        if len(self.problems) < MAX_PROBLEMS:
            where = f"position {position}: " if position is not None else ""
            self.problems.append(where + reason)


class _SessionState:
    __slots__ = ("info", "last_hash", "positions")

    def __init__(self, session_id: str) -> None:
        self.info = SessionInfo(session_id=session_id)
        self.last_hash = GENESIS
        self.positions: list[int] = []  # positions[version - 1]


def verify_log(
    log: EventLog,
    saved_head: Head | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check the whole ledger behind `log`; see the module docstring for what is checked."""
    report = VerifyReport()
    sessions: dict[str, _SessionState] = {}
    expected_position = 1
    previous_hash = GENESIS
    saved_hash_seen: bytes | None = None
    for position, value in log.read_raw():
        report.records_checked += 1
        view = memoryview(value)  # slices of a view copy nothing
        stored_hash, data = view[:HASH_SIZE], view[HASH_SIZE:]
        if progress is not None and report.records_checked % 10_000 == 0:
            progress(10_000)
        if position != expected_position:
            report.fail(position, f"gap in the log: expected position {expected_position}")
        expected_position = position + 1
        digest = record_hash(data)
        if digest != stored_hash:
            report.fail(position, "record bytes do not match their stored hash (altered)")
        try:
            recorded = decode_record(data)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
            report.fail(position, f"record does not decode: {error}")
            previous_hash = digest
            continue
        if recorded.position != position:
            report.fail(position, f"record says it is at position {recorded.position}")
        if recorded.prev_log_hash != previous_hash:
            report.fail(position, "link to the previous record of the log is broken")
        state = sessions.get(recorded.session_id)
        if state is None:
            state = sessions[recorded.session_id] = _SessionState(recorded.session_id)
        if recorded.prev_session_hash != state.last_hash:
            report.fail(
                position,
                f"session chain of {recorded.session_id!r} broken at version {recorded.version}",
            )
        try:
            state.info = evolve(state.info, recorded)
        except ProjectionError as error:
            report.fail(position, str(error))
        state.last_hash = digest
        state.positions.append(position)
        previous_hash = digest
        if saved_head is not None and position == saved_head.position:
            saved_hash_seen = digest
    if progress is not None:
        progress(report.records_checked % 10_000)
    head = log.head()
    report.head = head
    last_position = expected_position - 1
    if head.position != last_position:
        report.fail(head.position, f"stored head says {head.position}, log ends at {last_position}")
    elif head.hash != previous_hash:
        report.fail(last_position, "last record does not match the stored head hash")
    if saved_head is not None:
        if saved_head.position > last_position:
            report.fail(
                last_position + 1,
                f"log is truncated: it ends at {last_position}, the saved head is at "
                f"{saved_head.position}",
            )
        elif saved_head.position > 0 and saved_hash_seen != saved_head.hash:
            report.fail(saved_head.position, "record differs from the saved head's hash")
    _check_stream_index(log, sessions, report)
    _check_session_index(log, sessions, report)
    report.sessions_checked = len(sessions)
    return report


def _check_stream_index(
    log: EventLog, sessions: dict[str, _SessionState], report: VerifyReport
) -> None:
    """Every (session, version) maps to the right position, and nothing else is indexed."""
    expected_total = sum(len(state.positions) for state in sessions.values())
    seen = 0
    # Keys come sorted by session: decode each session id once, not once per record.
    current: bytes | None = None
    session_id = ""
    positions: list[int] = []
    for key, position in log.stream_index():
        seen += 1
        session_bytes = key[:-9]
        if session_bytes != current:
            current = session_bytes
            try:
                session_id = session_bytes.decode()
            except UnicodeDecodeError:
                session_id = ""
                positions = []
                report.fail(position, "stream index holds an undecodable session id")
                continue
            state = sessions.get(session_id)
            positions = state.positions if state is not None else []
        elif not session_id:
            report.fail(position, "stream index holds an undecodable session id")
            continue
        version = int.from_bytes(key[-8:], "big")
        actual = positions[version - 1] if 0 < version <= len(positions) else None
        if actual != position:
            report.fail(
                position,
                f"stream index maps {session_id!r} version {version} to {position}, "
                f"the log has it at {actual}",
            )
    if seen != expected_total:
        report.fail(None, f"stream index has {seen} entries, the log has {expected_total}")


def _check_session_index(
    log: EventLog, sessions: dict[str, _SessionState], report: VerifyReport
) -> None:
    """The stored session index equals the fold of the log."""
    stored = log.index_entries()
    for session_id, state in sessions.items():
        entry = stored.pop(session_id, None)
        if entry is None:
            report.fail(state.info.last_position, f"session {session_id!r} missing from the index")
        elif entry.info != state.info or entry.last_hash != state.last_hash:
            report.fail(
                state.info.last_position,
                f"session index entry of {session_id!r} differs from the log "
                "(run `chatledger rebuild` if the log verifies)",
            )
    for session_id in stored:
        report.fail(None, f"session index lists {session_id!r}, which has no records")
