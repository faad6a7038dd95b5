"""Verify one session on its own: its records' hashes, its hash chain, versions and index entry.

The whole-ledger check (`AuditStore.verify`) also covers the log chain and the indexes of
every session; this one answers "is this conversation intact?" for an auditor looking at one
id. Each record goes through the same per-record check as the whole-ledger one
(`storage.checks.check_record`), read through the port whatever the store.
"""

from __future__ import annotations

from collections.abc import Callable

from ..storage import AuditStore, VerifyReport
from ..storage.checks import SessionChain, check_record
from ..storage.verification import check_redactions


def verify_session(
    log: AuditStore, session_id: str, progress: Callable[[int], None] | None = None
) -> VerifyReport:
    """Check one session's records (found through its stream index), chain and index entry;
    UnknownSessionError if unknown. Records the index lost are the whole-ledger check's job."""
    log.require_info(session_id)
    report = VerifyReport(head=log.head())
    # The entry first, then the records: records are never rewritten, so records beyond
    # the entry's version that a later entry covers were appended since (by another
    # process, say) and are left out: the check is of one moment even with a writer running.
    entry = log.index_entry(session_id)
    stored = log.read_session_raw(session_id)
    if entry is not None and len(stored) > entry.info.version:
        later = log.index_entry(session_id)
        if later is not None and later.info.version >= len(stored):
            stored = stored[:entry.info.version]
    chain = SessionChain(session_id)
    for position, value in stored:
        if progress is not None:
            progress(1)
        report.records_checked += 1
        chains = {session_id: chain}
        digest, recorded, problems = check_record(position, value, chains, None)
        if recorded is not None and recorded.session_id != session_id:
            problems.insert(0, "the stream index points at a record of another session")
            chain.last_hash = digest  # the chain goes on from the record the index gave
        for problem in problems:
            report.fail(position, problem)
        if recorded is None:
            chain.last_hash = digest
    if entry is None or entry.info != chain.info or entry.last_hash != chain.last_hash:
        report.fail(
            chain.info.last_position or None,
            "the session index entry differs from the log (run `chatledger rebuild` if the "
            "log verifies)",
        )
    check_redactions({session_id: chain}, report)
    report.sessions_checked = 1
    return report
