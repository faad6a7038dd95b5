"""The hash chain: each record links to the hash of the previous record of its session and of
the log, so one flipped byte or a reordered record breaks a link that `verify` reports.

Two record formats, told apart by their first byte (`events.codec.is_sealed`): a record of
format 1 (and of format 2 when its event has no content) is hashed whole; a record of the
redaction-ready format 2 (`events.codec.SealedEnvelope`) is hashed over every byte but its
event's (which holds its salt), which its commitment stands for, so removing it (a
redaction) keeps the hash; the extents at the record's end say where it is. `sealed_digest`
also says whether the content is there and matches its commitment. This module only hashes bytes and parses saved heads; it must not touch storage.
"""

from __future__ import annotations

import hashlib
import struct

import msgspec

from ..events.codec import SEAL_TRAILER, is_sealed

HASH_SIZE = 32
GENESIS = bytes(HASH_SIZE)
"""The link of the first record of the log and of each session."""

CONTENT_PLAIN = "plain"
"""The record is hashed whole: no commitment (format 1, or an event without content)."""
CONTENT_KEPT = "kept"
"""The event (its salt in it) is there and matches the commitment."""
CONTENT_REDACTED = "redacted"
"""The event (its salt in it) was removed; the commitment stays."""
CONTENT_ALTERED = "altered"
"""The event does not match its commitment, or the extents do not fit the record."""

_blake2b = hashlib.blake2b
new_hasher = _blake2b(digest_size=HASH_SIZE).copy
"""A fresh BLAKE2b-256 hasher: a copy of a blank one, cheaper than building one from its
parameters (verify makes one or two per record). The blank one is never fed, so copying
it from any thread is safe."""
_NIL = b"\xc0"  # a redacted record's event
_MIN_SEAL_ELEMENT = 2 + SEAL_TRAILER
_EXTENTS = struct.Struct(">II")
_MIN_RECORD = 8 + 1 + _MIN_SEAL_ELEMENT  # an envelope's first bytes, nil, the seal


def encoded_bytes_length(size: int) -> int:
    """How many bytes MessagePack takes for a bin of `size` bytes."""
    if size < 0x100:
        return 2 + size
    return (3 if size < 0x10000 else 5) + size


def commitment(event: bytes) -> bytes:
    """The commitment to an event's bytes (its salt among them): BLAKE2b-256 (hiding once the
    salt is gone, binding while BLAKE2b resists collisions)."""
    return _blake2b(event, digest_size=HASH_SIZE).digest()


def extents(event_start: int, seal_element: int) -> bytes:
    """The seal's last 8 bytes: where the event starts, and the seal element's length."""
    return _EXTENTS.pack(event_start, seal_element)


def sealed_digest(record: bytes) -> tuple[bytes, str]:
    """The chain hash of a format-2 record and the state of its content (CONTENT_*), read
    from the extents at its end (no decoding: the caller decodes the record anyway). Runs
    once per record of a verify: kept to a few C calls."""
    size = len(record)
    if size < _MIN_RECORD:
        return _blake2b(record, digest_size=HASH_SIZE).digest(), CONTENT_ALTERED
    event_start, seal_element = _EXTENTS.unpack_from(record, size - 8)
    event_end = size - seal_element
    if not 8 <= event_start < event_end <= size - _MIN_SEAL_ELEMENT:
        return _blake2b(record, digest_size=HASH_SIZE).digest(), CONTENT_ALTERED
    hasher = new_hasher()
    hasher.update(record[:event_start])
    hasher.update(record[event_end:])
    digest = hasher.digest()
    event = record[event_start:event_end]
    if event == _NIL:
        return digest, CONTENT_REDACTED
    hasher = new_hasher()
    hasher.update(event)
    if hasher.digest() == record[-SEAL_TRAILER:-8]:
        return digest, CONTENT_KEPT
    return digest, CONTENT_ALTERED


def without_content(record: bytes) -> bytes:
    """A format-2 record with its event (and the salt in it) replaced by nil (the same chain
    hash)."""
    event_start, seal_element = _EXTENTS.unpack_from(record, len(record) - 8)
    return record[:event_start] + _NIL + record[len(record) - seal_element:]


def examine_record(record: bytes) -> tuple[bytes, str]:
    """A stored record's chain hash and the state of its content (CONTENT_*)."""
    if is_sealed(record):
        return sealed_digest(record)
    return _blake2b(record, digest_size=HASH_SIZE).digest(), CONTENT_PLAIN


def record_hash(record: bytes | memoryview) -> bytes:
    """The chain hash of one stored record's bytes (see the module docstring)."""
    data = bytes(record)
    if is_sealed(data):
        return sealed_digest(data)[0]
    return _blake2b(data, digest_size=HASH_SIZE).digest()


class Head(msgspec.Struct, frozen=True):
    """The log's last position and its record's hash: print it, keep it, check it later."""

    position: int
    hash: bytes

    def __str__(self) -> str:
        return f"{self.position}:{self.hash.hex()}"

    @classmethod
    def parse(cls, text: str) -> Head:
        """Parse a head printed as `POSITION:HEXHASH`."""
        position_text, _, hash_text = text.strip().partition(":")
        try:
            position = int(position_text)
            digest = bytes.fromhex(hash_text)
        except ValueError:
            raise ValueError(f"a head looks like POSITION:HEXHASH, not {text!r}") from None
        if position < 0 or len(digest) != HASH_SIZE:
            raise ValueError(f"a head looks like POSITION:HEXHASH (64 hex digits), not {text!r}")
        return cls(position, digest)
