"""The hash chain: each record links to the hash of the previous record of its session and of
the log, so one flipped byte or a reordered record breaks a link that `verify` reports.

Two record formats, told apart by their first byte (`events.codec.is_sealed`): a record of
format 1 (and of format 2 when its event has no content) is hashed whole; a record of the
redaction-ready format 2 (`events.codec.SealedEnvelope`) is hashed over every byte but its
event's and its salt's, which its commitment stands for, so removing them (a redaction)
keeps the hash. `sealed_digest` also says whether the content is there and matches its
commitment. This module only hashes bytes and parses saved heads; it must not touch storage.
"""

from __future__ import annotations

import hashlib

import msgspec

from ..events.codec import decode_sealed, is_nil, is_sealed

HASH_SIZE = 32
GENESIS = bytes(HASH_SIZE)
"""The link of the first record of the log and of each session."""

CONTENT_PLAIN = "plain"
"""The record is hashed whole: no commitment (format 1, or an event without content)."""
CONTENT_KEPT = "kept"
"""The event and its salt are there and match the commitment."""
CONTENT_REDACTED = "redacted"
"""The event and its salt were removed; the commitment stays."""
CONTENT_ALTERED = "altered"
"""The event does not match its commitment, or only one of event and salt is there."""

_blake2b = hashlib.blake2b
_NIL_LENGTH = 1


def encoded_bytes_length(size: int) -> int:
    """How many bytes MessagePack takes for a bin of `size` bytes."""
    if size < 0x100:
        return 2 + size
    return (3 if size < 0x10000 else 5) + size


def commitment(salt: bytes, event: bytes) -> bytes:
    """The commitment to an event's bytes: BLAKE2b-256 keyed with its salt (hiding once the
    salt is gone, binding while BLAKE2b resists collisions)."""
    return _blake2b(event, digest_size=HASH_SIZE, key=salt).digest()


def hashed_part(record: bytes, event_length: int, salt_length: int, tail_length: int) -> bytes:
    """What a format-2 record's hash covers: every byte but the event's and the salt's
    (given their encoded lengths, and that of what follows them: redacted form, commitment)."""
    salt_end = len(record) - tail_length
    event_start = salt_end - salt_length - event_length
    return record[:event_start] + record[salt_end:]


def sealed_digest(record: bytes) -> tuple[bytes, str]:
    """The chain hash of a format-2 record and the state of its content (CONTENT_*).
    Raises msgspec's errors if the record does not decode."""
    parts = decode_sealed(record)
    event = bytes(parts.event)
    salt = parts.salt
    tail = len(parts.redacted) + encoded_bytes_length(len(parts.commitment))
    salt_length = _NIL_LENGTH if salt is None else encoded_bytes_length(len(salt))
    digest = _blake2b(hashed_part(record, len(event), salt_length, tail),
                      digest_size=HASH_SIZE).digest()
    if is_nil(parts.event):
        state = CONTENT_REDACTED if salt is None else CONTENT_ALTERED
    elif salt is None or commitment(salt, event) != parts.commitment:
        state = CONTENT_ALTERED
    else:
        state = CONTENT_KEPT
    return digest, state


def examine_record(record: bytes) -> tuple[bytes, str]:
    """A stored record's chain hash and the state of its content (CONTENT_*); raises
    msgspec's errors for a format-2 record that does not decode."""
    if is_sealed(record):
        return sealed_digest(record)
    return _blake2b(record, digest_size=HASH_SIZE).digest(), CONTENT_PLAIN


def record_hash(record: bytes | memoryview) -> bytes:
    """The chain hash of one stored record's bytes (see the module docstring); a record that
    does not decode is hashed whole (its hash then matches nothing)."""
    data = bytes(record)
    if is_sealed(data):
        try:
            return sealed_digest(data)[0]
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
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
