"""Verification of a PostgreSQL ledger, by the same rules as LMDB's: every sealed record's
hash, its links to the previous record of the log and of its session, positions 1..N without a
gap, the fold of each session against the session index, the stored head, a saved head (so
truncation is caught), and the (session, version) columns against the records. It adds the
seal lag: records committed but not sealed yet, and for how long.

It reads in one REPEATABLE READ, read-only transaction (one consistent snapshot; it has no
transaction id, so it never holds back the sealer's horizon). It writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import psycopg

from ...events.codec import decode_record
from ...events.model import Redacted
from ...events.projections import ProjectionError, evolve
from .. import VerifyReport
from ..checks import SessionChain
from ..hashing import CONTENT_ALTERED, CONTENT_REDACTED, GENESIS, Head, examine_record, record_hash
from ..verification import check_redactions
from .records import decode_info, unsealed_record

PROGRESS_STEP = 10_000


class PostgresVerifyReport(VerifyReport, kw_only=True):
    """A verify report with the seal lag: committed records not sealed yet, the oldest's age."""

    unsealed_records: int = 0
    seal_lag_seconds: float = 0.0


_Session = SessionChain


def verify_snapshot(connection: psycopg.Connection[Any], saved_head: Head | None,
                    progress: Callable[[int], None] | None,
                    seal_lag_limit: float) -> PostgresVerifyReport:
    """Check the ledger as `connection`'s transaction sees it (see the module docstring)."""
    report = PostgresVerifyReport()
    sessions: dict[str, _Session] = {}
    expected_position = 1
    previous_hash = GENESIS
    saved_hash_seen: bytes | None = None
    with connection.cursor(name="chatledger_verify") as cursor:
        cursor.itersize = 2000
        cursor.execute(
            "SELECT position, session_id, version, hash, record FROM chatledger.events"
            " WHERE position IS NOT NULL ORDER BY position"
        )
        for position, session_id, version, stored_hash, record in cursor:
            report.records_checked += 1
            if progress is not None and report.records_checked % PROGRESS_STEP == 0:
                progress(PROGRESS_STEP)
            data = bytes(record) if record is not None else b""
            if position != expected_position:
                report.fail(position, f"gap in the log: expected position {expected_position}")
            expected_position = position + 1
            try:
                digest, content = examine_record(data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                digest, content = record_hash(data), None
            if stored_hash is None or digest != bytes(stored_hash):
                report.fail(position, "record bytes do not match their stored hash (altered)")
            if content == CONTENT_ALTERED:
                report.fail(position, "record content does not match its commitment (altered)")
            try:
                recorded = decode_record(data)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
                report.fail(position, f"record does not decode: {error}")
                previous_hash = digest
                continue
            if recorded.position != position:
                report.fail(position, f"record says it is at position {recorded.position}")
            if (recorded.session_id, recorded.version) != (session_id, version):
                report.fail(position, f"the row of {session_id!r} version {version} holds the "
                                      f"record of {recorded.session_id!r} version "
                                      f"{recorded.version}")
            if recorded.prev_log_hash != previous_hash:
                report.fail(position, "link to the previous record of the log is broken")
            state = sessions.get(recorded.session_id)
            if state is None:
                state = sessions[recorded.session_id] = _Session(recorded.session_id)
            if recorded.prev_session_hash != state.last_hash:
                report.fail(position, f"session chain of {recorded.session_id!r} broken at "
                                      f"version {recorded.version}")
            try:
                state.info = evolve(state.info, recorded)
            except ProjectionError as error:
                report.fail(position, str(error))
            state.last_hash = digest
            state.positions.append(position)
            if content == CONTENT_REDACTED:
                state.redacted.append(recorded.version)
            if type(recorded.event) is Redacted:
                state.redactions.add(recorded.event.version)
            previous_hash = digest
            if saved_head is not None and position == saved_head.position:
                saved_hash_seen = digest
    if progress is not None:
        progress(report.records_checked % PROGRESS_STEP)
    last_position = expected_position - 1
    _check_head(connection, report, last_position, previous_hash, saved_head, saved_hash_seen)
    _fold_unsealed(connection, report, sessions, seal_lag_limit)
    _check_session_index(connection, report, sessions)
    check_redactions(sessions, report)
    report.sessions_checked = len(sessions)
    return report


def _check_head(connection: psycopg.Connection[Any], report: PostgresVerifyReport,
                last_position: int, last_hash: bytes, saved_head: Head | None,
                saved_hash_seen: bytes | None) -> None:
    row = connection.execute("SELECT position, hash FROM chatledger.seal").fetchone()
    head = Head(int(row[0]), bytes(row[1])) if row is not None else Head(0, GENESIS)
    report.head = head
    if head.position != last_position:
        report.fail(head.position, f"stored head says {head.position}, log ends at {last_position}")
    elif head.hash != last_hash:
        report.fail(last_position, "last record does not match the stored head hash")
    if saved_head is not None:
        if saved_head.position > last_position:
            report.fail(last_position + 1, f"log is truncated: it ends at {last_position}, the "
                                           f"saved head is at {saved_head.position}")
        elif saved_head.position > 0 and saved_hash_seen != saved_head.hash:
            report.fail(saved_head.position, "record differs from the saved head's hash")


def _fold_unsealed(connection: psycopg.Connection[Any], report: PostgresVerifyReport,
                   sessions: dict[str, _Session], seal_lag_limit: float) -> None:
    """Fold the records not sealed yet (their session index entries include them) and
    report the seal lag; a lag past `seal_lag_limit` seconds is a problem."""
    rows = connection.execute(
        "SELECT session_id, version, recorded_at, schema_version, event,"
        " extract(epoch FROM clock_timestamp() - recorded_at)::float8"
        " FROM chatledger.events WHERE position IS NULL ORDER BY txid, seq"
    ).fetchall()
    for session_id, version, recorded_at, schema_version, event, age in rows:
        report.unsealed_records += 1
        report.seal_lag_seconds = max(report.seal_lag_seconds, float(age or 0.0))
        state = sessions.get(session_id)
        if state is None:
            state = sessions[session_id] = _Session(session_id)
        try:
            state.info = evolve(state.info, unsealed_record(
                session_id, int(version), recorded_at, int(schema_version), bytes(event or b"")))
        except (ProjectionError, msgspec.DecodeError, msgspec.ValidationError) as error:
            report.fail(None, f"unsealed record of {session_id!r} version {version}: {error}")
    if report.unsealed_records and report.seal_lag_seconds > seal_lag_limit:
        report.fail(None, f"{report.unsealed_records} committed records are not sealed, the "
                          f"oldest for {report.seal_lag_seconds:.1f} s: a long transaction "
                          "holds back the horizon, or no sealer runs (see pg_stat_activity)")


def _check_session_index(connection: psycopg.Connection[Any], report: PostgresVerifyReport,
                         sessions: dict[str, _Session]) -> None:
    rows = connection.execute(
        "SELECT s.session_id, s.info, e.position, s.position FROM chatledger.sessions s"
        " LEFT JOIN chatledger.events e ON e.session_id = s.session_id AND e.version = s.version"
    ).fetchall()
    stored = {session_id: (info, logged) for session_id, info, logged, _own in rows}
    for session_id, _info, logged, own in rows:
        if own is not None and own != logged:  # the entry's own position (schema 7)
            report.fail(logged, f"session index entry of {session_id!r} holds position {own}, "
                                f"its last record is at {logged} (run `chatledger rebuild`)")
    for session_id, state in sessions.items():
        entry = stored.pop(session_id, None)
        if entry is None:
            report.fail(state.info.last_position or None,
                        f"session {session_id!r} missing from the index")
            continue
        try:
            info = decode_info(bytes(entry[0]), entry[1])
        except (msgspec.DecodeError, msgspec.ValidationError):
            info = None
        if info != state.info:
            report.fail(state.info.last_position or None,
                        f"session index entry of {session_id!r} differs from the log "
                        "(run `chatledger rebuild` if the log verifies)")
    for session_id in stored:
        report.fail(None, f"session index lists {session_id!r}, which has no records")
