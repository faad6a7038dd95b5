"""Lineage checks: does each fork still agree with the parent it names?

A fork starts with `ForkedFrom` (parent, version, the hash of the parent's record there),
followed by copies of the parent's events up to that version (see `actors/fork.py`). The
check recomputes the hash of the parent's record at that version and compares it with the
one the fork recorded (so a parent whose history was rewritten since, even with its hashes
recomputed, is reported on the fork), and compares the fork's copies with what the parent
holds. Reads the store only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from ..events.forks import fork_copies
from ..events.model import ForkedFrom
from ..storage import AuditStore, record_hash
from ..storage.hashing import HASH_SIZE


class Finding(NamedTuple):
    """What the check found about one fork: where (a position, if known) and what;
    `unverifiable` when the parent is not in this ledger (a partial import), which is a
    note, not a failure."""

    position: int | None
    message: str
    unverifiable: bool = False


def check_lineage(log: AuditStore, session_ids: Iterable[str] | None = None) -> list[Finding]:
    """What the check finds about every fork (or the forks among `session_ids`): a parent
    record whose hash is not the one recorded, copies that differ from it, a parent cut
    short, or (a note) a parent this ledger does not hold."""
    if session_ids is None:
        forks = [info.session_id for info in log.sessions() if info.forked_from is not None]
    else:
        forks = [session_id for session_id in session_ids
                 if (info := log.info(session_id)) is not None and info.forked_from is not None]
    problems: list[Finding] = []
    for fork_id in forks:
        problems.extend(check_fork(log, fork_id))
    return problems


def check_fork(log: AuditStore, fork_id: str) -> list[Finding]:
    """The problems of one fork against its parent (empty: it agrees)."""
    records = log.read_session(fork_id)
    if not records or not isinstance(records[0].event, ForkedFrom):
        where = records[0].position if records else None
        return [Finding(where, f"session {fork_id} is indexed as a fork but does not start with "
                        "ForkedFrom")]
    forked: ForkedFrom = records[0].event
    at = records[0].position
    parent, version = forked.parent_session_id, forked.parent_version
    stored = log.read_session_raw(parent, from_version=version) if version >= 1 else []
    if log.info(parent) is None:
        return [Finding(at, f"fork {fork_id} names session {parent}, which this ledger does "
                            "not hold (a partial import?): its lineage cannot be checked here",
                        unverifiable=True)]
    if not stored:
        return [Finding(at, f"fork {fork_id} names version {version} of session {parent}, "
                            "which the parent does not have (its history was cut short)")]
    position, value = stored[0][0], bytes(stored[0][1])
    digest = record_hash(value[HASH_SIZE:])
    if digest.hex() != forked.parent_hash or position != forked.parent_position:
        return [Finding(at, f"fork {fork_id} was made from version {version} of session {parent} "
                     f"with hash {forked.parent_hash}, but that record (position {position}) "
                     f"now hashes to {digest.hex()}: the parent's history changed after the "
                     "fork")]
    expected = fork_copies(log.read_session(parent)[:version])
    copies = records[1:1 + len(expected)]
    actual = [recorded.event for recorded in copies]
    for index, (want, have) in enumerate(zip(expected, actual, strict=False)):
        if want != have:  # frozen structs compare field by field (unknown events by bytes)
            return [Finding(copies[index].position,
                     f"fork {fork_id}'s version {copies[index].version} differs from the "
                     f"parent {parent}'s history it copies")]
    if len(actual) < len(expected):
        return [Finding(at, f"fork {fork_id} holds {len(actual)} of the {len(expected)} events it "
                     f"copies from session {parent}")]
    return []
