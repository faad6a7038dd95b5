"""The hash chain: each record links to the hash of the previous record of its session and of
the log, so one flipped byte or a reordered record breaks a link that `verify` reports.

This module only hashes bytes and parses saved heads; it must not touch storage.
"""

from __future__ import annotations

import hashlib

import msgspec

HASH_SIZE = 32
GENESIS = bytes(HASH_SIZE)
"""The link of the first record of the log and of each session."""


def record_hash(record: bytes | memoryview) -> bytes:
    """The BLAKE2b-256 digest of one stored record's bytes."""
    return hashlib.blake2b(record, digest_size=HASH_SIZE).digest()


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
