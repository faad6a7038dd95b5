"""Lineage checks: does each fork still agree with the parent it names?

A fork starts with `ForkedFrom` (parent, version, the hash of the parent's record there),
followed by copies of the parent's events up to that version (see `actors/fork.py`). The
check recomputes the hash of the parent's record at that version and compares it with the
one the fork recorded (so a parent whose history was rewritten since, even with its hashes
recomputed, is reported on the fork), and compares the fork's copies with what the parent
holds. Reads the store only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ..events.codec import decode_envelope, decode_event, decode_record
from ..events.forks import fork_copy
from ..events.model import ForkedFrom
from ..storage import AuditStore, StoredValue, record_hash
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
    fork_stored = log.read_session_raw(fork_id)
    first = decode_record(bytes(fork_stored[0][1])[HASH_SIZE:]) if fork_stored else None
    if first is None or not isinstance(first.event, ForkedFrom):
        where = fork_stored[0][0] if fork_stored else None
        return [Finding(where, f"session {fork_id} is indexed as a fork but does not start "
                               "with ForkedFrom")]
    forked: ForkedFrom = first.event
    at = first.position
    parent, version = forked.parent_session_id, forked.parent_version
    if log.info(parent) is None:
        return [Finding(at, f"fork {fork_id} names session {parent}, which this ledger does "
                            "not hold (a partial import?): its lineage cannot be checked here",
                        unverifiable=True)]
    parent_stored = log.read_session_raw(parent)[:version] if version >= 1 else []
    if len(parent_stored) < version or not parent_stored:
        return [Finding(at, f"fork {fork_id} names version {version} of session {parent}, "
                            "which the parent does not have (its history was cut short)")]
    position, value = parent_stored[-1][0], bytes(parent_stored[-1][1])
    digest = record_hash(value[HASH_SIZE:])
    if digest.hex() != forked.parent_hash or position != forked.parent_position:
        return [Finding(at, f"fork {fork_id} was made from version {version} of session "
                            f"{parent} with hash {forked.parent_hash}, but that record "
                            f"(position {position}) now hashes to {digest.hex()}: the "
                            "parent's history changed after the fork")]
    return _compare_copies(fork_id, parent, parent_stored, fork_stored[1:], at)


REDACTED_EVENT = b"\xc0"
"""A redacted record's event (MessagePack nil): its content is gone, its commitment stays."""


def _compare_copies(fork_id: str, parent: str, parent_stored: Sequence[StoredValue],
                    fork_stored: Sequence[StoredValue], at: int) -> list[Finding]:
    """Walk the parent's records and the fork's copies together: an event copied verbatim
    has the same stored bytes (only the envelopes are decoded); any other parent event is
    decoded, and is either not copied or must equal its copy."""
    copies = iter(fork_stored)
    for _, parent_value in parent_stored:
        parent_envelope = decode_envelope(bytes(parent_value)[HASH_SIZE:])
        copy = next(copies, None)
        copy_envelope = decode_envelope(bytes(copy[1])[HASH_SIZE:]) if copy else None
        if copy_envelope is not None and (bytes(copy_envelope.event) == bytes(
                parent_envelope.event) or REDACTED_EVENT in (bytes(copy_envelope.event),
                                                             bytes(parent_envelope.event))):
            continue  # the same bytes, or content redacted on one side (only content is
            # redacted, and every content event is copied: the copy is this record's)
        expected = fork_copy(decode_event(bytes(parent_envelope.event),
                                          parent_envelope.schema_version))
        if expected is None:  # not copied: the fork's record is the next parent's copy
            copies = itertools.chain([copy], copies) if copy is not None else copies
            continue
        if copy is None or copy_envelope is None:
            return [Finding(at, f"fork {fork_id} lacks copies of session {parent}'s history "
                                f"(from its version {parent_envelope.version} on)")]
        actual = decode_event(bytes(copy_envelope.event), copy_envelope.schema_version)
        if actual != expected:  # frozen structs compare field by field
            return [Finding(copy[0], f"fork {fork_id}'s version {copy_envelope.version} "
                                     f"differs from the parent {parent}'s version "
                                     f"{parent_envelope.version}, which it copies")]
    return []
