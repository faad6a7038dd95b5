"""The per-record check of a ledger, in one place: every verifier walks records through it.

`check_record` takes one stored value (hash + record bytes) and says what is wrong with it:
its bytes against its stored hash (by its format's rule, `hashing`), its content against its
commitment, whether it decodes, its position, its links to the previous record of the log
and of its session, and whether it folds onto its session's state. A redacted record (content
and salt removed, commitment kept) is intact: it is counted on its session's chain, and so is
every `Redacted` event, so that a walk can tell content removed without a record of it.
The whole-ledger walk, the parallel range check and the one-session audit differ only in the
order they read records and in what they check around them. No I/O here.
"""

from __future__ import annotations

import hashlib

import msgspec

from ..events.codec import SEALED_RECORD_MARKER, decode_record
from ..events.model import Recorded, Redacted
from ..events.projections import ProjectionError, SessionInfo, evolve
from .hashing import (
    CONTENT_ALTERED,
    CONTENT_REDACTED,
    GENESIS,
    HASH_SIZE,
    new_hasher,
    sealed_digest,
)

DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, ValueError)
"""What a damaged record's decoding raises."""

_blake2b = hashlib.blake2b
_SEALED = bytes([SEALED_RECORD_MARKER])


class SessionChain:
    """A session's state as a verifier has folded it so far: info, last hash, positions."""

    __slots__ = ("info", "last_hash", "positions", "redacted", "redactions")

    def __init__(self, session_id: str) -> None:
        self.info = SessionInfo(session_id=session_id)
        self.last_hash = GENESIS
        self.positions: list[int] = []  # positions[version - 1]
        self.redacted: list[int] = []  # versions whose content was removed
        self.redactions: set[int] = set()  # versions a Redacted event names

    def unrecorded_redactions(self) -> list[int]:
        """Versions whose content is gone although no Redacted event of the session says so."""
        return [version for version in self.redacted if version not in self.redactions]


def unrecorded_redaction_problem(session_id: str, versions: list[int]) -> str:
    """The problem of content removed without a Redacted event (edited outside chatledger)."""
    listed = ", ".join(str(version) for version in versions)
    return (f"session {session_id!r}: the content of version(s) {listed} was removed without "
            "a Redacted event (the file was edited outside chatledger)")


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
    content = None
    if data[:1] == _SEALED:
        try:
            digest, content = sealed_digest(data)
        except DECODE_ERRORS:
            digest = _blake2b(data, digest_size=HASH_SIZE).digest()
    else:
        hasher = new_hasher()
        hasher.update(data)
        digest = hasher.digest()
    if digest != value[:HASH_SIZE]:
        problems.append("record bytes do not match their stored hash (altered)")
    if content == CONTENT_ALTERED:
        problems.append("record content does not match its commitment (altered)")
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
    if content == CONTENT_REDACTED:
        chain.redacted.append(recorded.version)
    if type(recorded.event) is Redacted:
        chain.redactions.add(recorded.event.version)
    return digest, recorded, problems
