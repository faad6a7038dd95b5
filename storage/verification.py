"""Verification of a ledger: both hash chains, the stream index and the session index.

`verify_log` walks the log once, recomputing every record's hash, checking the links to the
previous record of the log and of the session, the versions, the stream index and the session
index (by folding every event), and the stored head; a saved head catches truncation. It reads
only, in short transactions.

A large log is checked by two processes, session by session (see `verify_helper`), and only
a clean result is taken from them: anything found sends the check back to the sequential
walk, which reports every problem in log order.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from ..events.codec import decode_record
from ..events.projections import ProjectionError, SessionInfo, evolve
from .hashing import GENESIS, HASH_SIZE, Head, record_hash
from .verify_helper import RangeReport, check_sessions

if TYPE_CHECKING:
    from .lmdb_log import EventLog

MAX_PROBLEMS = 20
PARALLEL_MIN_RECORDS = 100_000
"""Below this many records a helper process costs more than it saves."""
HELPER_TIMEOUT = 60.0
"""Seconds the helper may take beyond 50 us per record before it is given up on."""

_helper_decoder = msgspec.msgpack.Decoder(RangeReport)
_HELPER_MAIN = (
    f"import sys; from {__package__}.verify_helper import main; sys.exit(main(sys.argv[1:]))"
)


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
    parallel: bool | None = None,
) -> VerifyReport:
    """Check the whole ledger behind `log`; see the module docstring for what is checked.

    With `parallel` (the default for logs of PARALLEL_MIN_RECORDS records or more on a
    machine with several cores) this thread checks the first half of the sessions and a
    helper process the second (`verify_helper`); if either finds anything wrong, or the
    helper fails, the sequential check runs and its report is returned, so the verdict and
    the problems listed never depend on the path taken. Blocks the calling thread
    throughout.
    """
    if parallel is None:
        parallel = (os.cpu_count() or 1) > 1 and log.count() >= PARALLEL_MIN_RECORDS
    if parallel:
        advanced = [0]

        def counted(records: int) -> None:
            advanced[0] += records
            if progress is not None:
                progress(records)

        report = _verify_with_helper(log, saved_head, counted)
        if report is not None:
            return report
        if advanced[0]:
            progress = None  # the progress shown already covers the log
    return _verify_sequentially(log, saved_head, progress)


def _verify_sequentially(
    log: EventLog,
    saved_head: Head | None,
    progress: Callable[[int], None] | None,
) -> VerifyReport:
    """The one-thread check: every problem is found and reported in log order."""
    report = VerifyReport()
    sessions: dict[str, _SessionState] = {}
    expected_position = 1
    previous_hash = GENESIS
    saved_hash_seen: bytes | None = None
    for position, value in log.read_raw():
        report.records_checked += 1
        # Byte slices, not memoryview slices: msgspec and blake2b read bytes faster.
        stored_hash, data = value[:HASH_SIZE], value[HASH_SIZE:]
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


def _start_helper(path: str, start: bytes) -> subprocess.Popen[bytes] | None:
    """Start `verify_helper` on the sessions from `start` on, or None if it cannot start."""
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _HELPER_MAIN, path, start.hex()],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None


def _helper_report(helper: subprocess.Popen[bytes], records: int) -> RangeReport | None:
    """Wait for the helper's report (None if it failed or took far too long)."""
    try:
        output, _ = helper.communicate(timeout=HELPER_TIMEOUT + records / 20_000)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.communicate()
        return None
    if helper.returncode != 0:
        return None
    try:
        return _helper_decoder.decode(output)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _middle_session(log: EventLog) -> bytes | None:
    """The id (bytes) of the session in the middle of the session index, if it has two."""
    store = log.store
    with store.shared.transaction() as txn:
        count = int(txn.stat(store.sessions_db)["entries"])
        if count < 2:
            return None
        cursor = txn.cursor(db=store.sessions_db)
        for index, key in enumerate(cursor.iternext(keys=True, values=False)):
            if index == count // 2:
                return bytes(key)
    return None


def _stored_hash(log: EventLog, position: int) -> bytes | None:
    """The hash stored with the record at `position` (GENESIS at 0, None if missing)."""
    if position == 0:
        return GENESIS
    store = log.store
    with store.shared.transaction() as txn:
        value = txn.get(position.to_bytes(8, "big"), db=store.log_db)
        return None if value is None else bytes(value[:HASH_SIZE])


def _verify_with_helper(
    log: EventLog,
    saved_head: Head | None,
    progress: Callable[[int], None] | None,
) -> VerifyReport | None:
    """The two-process check: a clean report, or None when the sequential check must decide.

    This thread checks the first half of the sessions, a helper process the second
    (`verify_helper.check_sessions`: hashes, both chain links, versions, the fold, the
    stream and session index entries of each session); then the totals must add up: every
    record of the log reached once through the stream index, every session indexed once,
    positions 1..N without a gap, and the stored and saved heads.
    """
    middle = _middle_session(log)
    helper = _start_helper(log.path, middle) if middle is not None else None
    if middle is not None and helper is None:
        return None
    try:
        mine = check_sessions(log, b"", middle, progress)
        theirs = RangeReport()
        if helper is not None:
            helper_report = _helper_report(helper, mine.records * 2)
            if helper_report is None:
                return None
            theirs = helper_report
    finally:
        if helper is not None and helper.poll() is None:  # interrupted: stop the helper
            helper.kill()
            helper.communicate()
    if not (mine.ok and theirs.ok):
        return None
    records = mine.records + theirs.records
    sessions = mine.sessions + theirs.sessions
    store = log.store
    with store.shared.transaction() as txn:
        log_count = int(txn.stat(store.log_db)["entries"])
        sessions_count = int(txn.stat(store.sessions_db)["entries"])
        cursor = txn.cursor(db=store.log_db)
        last_key = bytes(cursor.key()) if cursor.last() else bytes(8)
    head = log.head()
    if (
        records != log_count
        or sessions != sessions_count
        or len(last_key) != 8
        or int.from_bytes(last_key, "big") != records
        or head.position != records
        or _stored_hash(log, records) != head.hash
    ):
        return None
    if saved_head is not None and saved_head.position > 0 and (
        saved_head.position > records or _stored_hash(log, saved_head.position) != saved_head.hash
    ):
        return None
    if progress is not None and theirs.records:
        progress(theirs.records)
    return VerifyReport(records_checked=records, sessions_checked=sessions, head=head)


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
