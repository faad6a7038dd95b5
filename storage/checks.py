"""The per-record check of a ledger, in one place: every verifier walks records through it.

`check_record` takes one stored value (hash + record bytes) and says what is wrong with it:
its bytes against its stored hash, whether it decodes, its position, its links to the
previous record of the log and of its session, and whether it folds onto its session's state.
The whole-ledger walk, the parallel range check and the one-session audit differ only in the
order they read records and in what they check around them. No I/O here.
"""

from __future__ import annotations

import hashlib

import msgspec

from ..events.codec import decode_record
from ..events.model import Recorded
from ..events.projections import ProjectionError, SessionInfo, evolve
from .hashing import GENESIS, HASH_SIZE

DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, ValueError)
"""What a damaged record's decoding raises."""

_blake2b = hashlib.blake2b


class SessionChain:
    """A session's state as a verifier has folded it so far: info, last hash, positions."""

    __slots__ = ("info", "last_hash", "positions")

    def __init__(self, session_id: str) -> None:
        self.info = SessionInfo(session_id=session_id)
        self.last_hash = GENESIS
        self.positions: list[int] = []  # positions[version - 1]


def check_record(
    position: int,
    value: bytes,
    chains: dict[str, SessionChain],
    previous_log_hash: bytes | None,
) -> tuple[bytes, Recorded | None, list[str]]:
    """Check one stored value and fold it onto its session's chain (added to `chains` on
    first sight); `previous_log_hash` None skips the log link. Returns the record's hash,
    the record (None if it does not decode) and the problems found (empty: intact)."""
    problems: list[str] = []
    # Byte slices, not memoryview slices: msgspec and blake2b read bytes faster. The hash
    # is `hashing.record_hash`, inlined: this runs once per record of a whole-ledger verify.
    data = value[HASH_SIZE:]
    digest = _blake2b(data, digest_size=HASH_SIZE).digest()
    if digest != value[:HASH_SIZE]:
        problems.append("record bytes do not match their stored hash (altered)")
    try:
        recorded = decode_record(data)
    except DECODE_ERRORS as error:
        problems.append(f"record does not decode: {error}")
        return digest, None, problems
    if recorded.position != position:
        problems.append(f"record says it is at position {recorded.position}")
    if previous_log_hash is not None and recorded.prev_log_hash != previous_log_hash:
        problems.append("link to the previous record of the log is broken")
    session_id = recorded.session_id
    chain = chains.get(session_id)
    if chain is None:
        chain = chains[session_id] = SessionChain(session_id)
    if recorded.prev_session_hash != chain.last_hash:
        problems.append(f"session chain of {session_id!r} broken at version {recorded.version}")
    try:
        chain.info = evolve(chain.info, recorded)
    except ProjectionError as error:
        problems.append(str(error))
    chain.last_hash = digest
    chain.positions.append(position)
    return digest, recorded, problems
