"""Verify one session on its own: its records' hashes, its hash chain, versions and index entry.

The whole-ledger check (`EventLog.verify`) also covers the log chain and the indexes of every
session; this one answers "is this conversation intact?" for an auditor looking at one id.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from ..events.codec import decode_record
from ..events.projections import ProjectionError, SessionInfo, evolve
from ..storage import GENESIS, EventLog, VerifyReport, record_hash
from ..storage.hashing import HASH_SIZE


def verify_session(
    log: EventLog, session_id: str, progress: Callable[[int], None] | None = None
) -> VerifyReport:
    """Check one session's records (found through its stream index), chain and index entry;
    UnknownSessionError if unknown. Records the index lost are the whole-ledger check's job."""
    log.require_info(session_id)
    report = VerifyReport(head=log.head())
    info = SessionInfo(session_id=session_id)
    last_hash = GENESIS
    for position, value in log.read_session_raw(session_id):
        if progress is not None:
            progress(1)
        report.records_checked += 1
        stored_hash, data = value[:HASH_SIZE], value[HASH_SIZE:]
        digest = record_hash(data)
        if digest != stored_hash:
            report.fail(position, "record bytes do not match their stored hash (altered)")
        try:
            recorded = decode_record(data)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
            report.fail(position, f"record does not decode: {error}")
            last_hash = digest
            continue
        if recorded.session_id != session_id or recorded.position != position:
            report.fail(position, "the stream index points at a record of another place")
        if recorded.prev_session_hash != last_hash:
            report.fail(position, f"session chain broken at version {recorded.version}")
        try:
            info = evolve(info, recorded)
        except ProjectionError as error:
            report.fail(position, str(error))
        last_hash = digest
    entry = log.index_entry(session_id)
    if entry is None or entry.info != info or entry.last_hash != last_hash:
        report.fail(
            info.last_position or None,
            "the session index entry differs from the log (run `chatledger rebuild` if the "
            "log verifies)",
        )
    report.sessions_checked = 1
    return report
