"""Verification of a ledger snapshot: both hash chains, the stream index and the session index.

`verify_snapshot` walks the log of one consistent snapshot once, checking every record with
`checks.check_record` (hash, commitment, decoding, position, both chain links, the fold), then
the stored head, a saved head (which catches truncation), the stream index (session, version
-> position), the session index (the fold of each session), and that every redacted record
has its `Redacted` event. Redacted records are counted, never reported as tampered. Each
index is first compared whole with what the fold implies (`stream_index_matches`,
`index_matches`: a few C-level scans and comparisons); only one that differs is walked entry
by entry, which is what says how. Every store verifies through it,
so every store reports the same problems in the same words. It only reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

import msgspec

from .checks import SessionChain, check_record, unrecorded_redaction_problem
from .hashing import GENESIS, Head
from .records import IndexEntry, StoredValue

MAX_PROBLEMS = 20
PROGRESS_STEP = 10_000


class VerifyReport(msgspec.Struct, kw_only=True):
    """What `verify` found: ok, how much it checked, and the first bad position and why."""

    ok: bool = True
    records_checked: int = 0
    sessions_checked: int = 0
    first_bad_position: int | None = None
    reason: str | None = None
    problems: list[str] = msgspec.field(default_factory=list)
    head: Head = msgspec.field(default_factory=lambda: Head(0, GENESIS))
    records_redacted: int = 0
    """Records whose content was redacted (removed; their commitments verified in the chain)."""

    def fail(self, position: int | None, reason: str) -> None:
        """Record a problem; the first one becomes the report's verdict."""
        if self.ok:
            self.ok = False
            self.first_bad_position = position
            self.reason = reason
        if len(self.problems) < MAX_PROBLEMS:
            where = f"position {position}: " if position is not None else ""
            self.problems.append(where + reason)


class LedgerSnapshot(Protocol):
    """One consistent view of a store's log and indexes, as a verifier reads it."""

    def records(self) -> Iterator[StoredValue]:
        """Every stored value with its position, in log order."""
        ...

    def head(self) -> Head:
        """The head as stored."""
        ...

    def stream_index(self) -> Iterator[tuple[str | None, int, int]]:
        """Every (session id, version, position) of the stream index, sessions in key order
        (the id None when the stored key does not decode)."""
        ...

    def stream_index_matches(self, positions: Mapping[str, list[int]]) -> bool:
        """Whether the stream index is exactly `positions` (session id -> the position of
        each version, in version order), checked in bulk; False may also mean "cannot
        tell quickly": the caller then walks `stream_index` entry by entry."""
        ...

    def index_entries(self) -> dict[str, IndexEntry]:
        """The whole session index as stored."""
        ...

    def index_matches(self, entries: Mapping[str, IndexEntry]) -> bool:
        """Whether the session index is exactly `entries`, checked in bulk; False may also
        mean "cannot tell quickly": the caller then compares `index_entries` one by one."""
        ...


def verify_snapshot(
    snapshot: LedgerSnapshot,
    saved_head: Head | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check a whole snapshot: every problem is found and reported in log order."""
    report = VerifyReport()
    chains: dict[str, SessionChain] = {}
    expected_position = 1
    previous_hash = GENESIS
    saved_position = saved_head.position if saved_head is not None else -1
    saved_hash_seen: bytes | None = None
    checked = 0
    for position, value in snapshot.records():
        checked += 1
        if position != expected_position:
            report.fail(position, f"gap in the log: expected position {expected_position}")
        expected_position = position + 1
        previous_hash, _, problems = check_record(position, value, chains, previous_hash)
        if problems:
            for problem in problems:
                report.fail(position, problem)
        if position == saved_position:
            saved_hash_seen = previous_hash
        if progress is not None and checked % PROGRESS_STEP == 0:
            progress(PROGRESS_STEP)
    report.records_checked = checked
    if progress is not None:
        progress(checked % PROGRESS_STEP)
    head = snapshot.head()
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
    _check_stream_index(snapshot, chains, report)
    _check_session_index(snapshot, chains, report)
    check_redactions(chains, report)
    report.sessions_checked = len(chains)
    return report


def check_redactions(chains: dict[str, SessionChain], report: VerifyReport) -> None:
    """Count the redacted records; content removed without a Redacted event is a problem."""
    for session_id, chain in chains.items():
        report.records_redacted += len(chain.redacted)
        missing = chain.unrecorded_redactions()
        if missing:
            report.fail(chain.positions[missing[0] - 1],
                        unrecorded_redaction_problem(session_id, missing))


def _check_stream_index(
    snapshot: LedgerSnapshot, chains: dict[str, SessionChain], report: VerifyReport
) -> None:
    """Every (session, version) maps to the right position, and nothing else is indexed."""
    if snapshot.stream_index_matches({session_id: chain.positions
                                      for session_id, chain in chains.items()}):
        return  # the walk below would find nothing: it is only there to say what differs
    expected_total = sum(len(chain.positions) for chain in chains.values())
    seen = 0
    current: str | None = None
    positions: list[int] = []
    for session_id, version, position in snapshot.stream_index():
        seen += 1
        if session_id is None:
            report.fail(position, "stream index holds an undecodable session id")
            continue
        if session_id != current:
            current = session_id
            chain = chains.get(session_id)
            positions = chain.positions if chain is not None else []
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
    snapshot: LedgerSnapshot, chains: dict[str, SessionChain], report: VerifyReport
) -> None:
    """The stored session index equals the fold of the log."""
    if snapshot.index_matches({session_id: IndexEntry(info=chain.info, last_hash=chain.last_hash)
                               for session_id, chain in chains.items()}):
        return
    stored = snapshot.index_entries()
    for session_id, chain in chains.items():
        entry = stored.pop(session_id, None)
        if entry is None:
            report.fail(chain.info.last_position, f"session {session_id!r} missing from the index")
        elif entry.info != chain.info or entry.last_hash != chain.last_hash:
            report.fail(
                chain.info.last_position,
                f"session index entry of {session_id!r} differs from the log "
                "(run `chatledger rebuild` if the log verifies)",
            )
    for session_id in stored:
        report.fail(None, f"session index lists {session_id!r}, which has no records")
