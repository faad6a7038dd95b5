"""The LMDB ledger's on-disk layout, defined once: databases, keys, and the codecs of values.

Named databases in one environment:
- `log`:      position (8-byte big-endian) -> the record's BLAKE2b-256 hash, then the record
              (MessagePack envelope + event); the stored hash pins a flipped byte to its record
- `streams`:  session id (UTF-8), NUL, version (8-byte big-endian) -> position (a `log` key)
- `sessions`: session id (UTF-8) -> index entry (the folded SessionInfo and the last hash)
- `meta`:     `format` -> the format marker (version 2: records may be redaction-ready,
              see `events.codec.SealedEnvelope`); `head` -> last position (8 bytes) + its hash;
              `lease`, NUL, session id -> the session's lease record (storage.leases)

Every module of the LMDB store (and the test fixtures that forge damage) builds keys and
values here. Changing anything here changes the file format. No I/O here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from ..hashing import GENESIS, Head
from ..records import IndexEntry

LOG_DB = b"log"
STREAMS_DB = b"streams"
SESSIONS_DB = b"sessions"
META_DB = b"meta"
DATABASES = (LOG_DB, STREAMS_DB, SESSIONS_DB, META_DB)

META_FORMAT = b"format"
META_HEAD = b"head"
FORMAT_MARKER = b"chatledger-lmdb"
FORMAT_VERSION = 2
"""Format 2 (redaction-ready records, `events.codec.SealedEnvelope`) reads format 1 as it
is; a format-1 ledger is marked 2 by the first write of this release, so an older release
refuses it instead of taking its new records for tampered ones."""

META_LEASE_PREFIX = b"lease\x00"
POSITION_BYTES = 8
_STREAM_SUFFIX = 1 + POSITION_BYTES  # NUL, then the version

_value_encoder = msgspec.msgpack.Encoder()
_index_decoder = msgspec.msgpack.Decoder(IndexEntry)
_format_decoder = msgspec.msgpack.Decoder(dict[str, Any])


def position_key(position: int) -> bytes:
    """The `log` key of a position (also the value of a `streams` entry)."""
    return position.to_bytes(POSITION_BYTES, "big")


def position_keys(positions: Iterable[int], count: int) -> bytes:
    """The `log` keys of `count` positions, joined (what their `streams` values hold)."""
    return struct.pack(f">{count}Q", *positions)


def key_position(key: bytes) -> int:
    """The position of a `log` key."""
    return int.from_bytes(key, "big")


def session_key(session_id: str) -> bytes:
    """The `sessions` key of a session."""
    return session_id.encode()


def stream_prefix(session_id: str) -> bytes:
    """What every `streams` key of a session starts with."""
    return session_id.encode() + b"\x00"


def stream_key(session_id: str, version: int) -> bytes:
    """The `streams` key of a session's version."""
    return session_id.encode() + b"\x00" + version.to_bytes(POSITION_BYTES, "big")


def is_stream_key(key: bytes) -> bool:
    """Whether a `streams` key has the shape of one (a non-empty id, NUL, 8 bytes)."""
    return len(key) > _STREAM_SUFFIX and key[-_STREAM_SUFFIX] == 0


def stream_key_session(key: bytes) -> bytes:
    """The session id bytes of a `streams` key."""
    return key[:-_STREAM_SUFFIX]


def stream_key_version(key: bytes) -> int:
    """The version of a `streams` key."""
    return int.from_bytes(key[-POSITION_BYTES:], "big")


def split_stream_key(key: bytes) -> tuple[bytes, int] | None:
    """The session id bytes and the version of a `streams` key (None if it has not the shape
    of one: see `is_stream_key`), in one call (verify splits every key of the index)."""
    if len(key) <= _STREAM_SUFFIX or key[-_STREAM_SUFFIX] != 0:
        return None
    return key[:-_STREAM_SUFFIX], int.from_bytes(key[-POSITION_BYTES:], "big")


def joined_stream_keys(sessions: Sequence[tuple[bytes, int]]) -> tuple[list[int], bytes]:
    """The `streams` keys of versions 1..count of each (stream prefix, count), in that
    order: each key's length, and all of them joined (built in bulk, for `verify`)."""
    longest = max((count for _, count in sessions), default=0)
    versions = [b""] + [version.to_bytes(POSITION_BYTES, "big")
                        for version in range(1, longest + 1)]
    lengths: list[int] = []
    for prefix, count in sessions:
        lengths += [len(prefix) + POSITION_BYTES] * count
    # prefix.join([b"", v1, v2]) is prefix + v1 + prefix + v2: one session's keys
    return lengths, b"".join(prefix.join(versions[:count + 1]) for prefix, count in sessions)


def lease_key(session_id: str) -> bytes:
    """The `meta` key of a session's lease record."""
    return META_LEASE_PREFIX + session_id.encode()


def encode_head(position: int, digest: bytes) -> bytes:
    """The `meta` head value."""
    return position.to_bytes(POSITION_BYTES, "big") + digest


def decode_head(data: bytes | None) -> Head:
    """The head of a `meta` head value (the empty log's head when there is none)."""
    if data is None:
        return Head(0, GENESIS)
    return Head(int.from_bytes(data[:POSITION_BYTES], "big"), data[POSITION_BYTES:])


def encode_index_entry(entry: IndexEntry) -> bytes:
    """Encode a `sessions` value."""
    return _value_encoder.encode(entry)


def decode_index_entry(data: bytes) -> IndexEntry:
    """Decode a `sessions` value."""
    return _index_decoder.decode(data)


def encode_format() -> bytes:
    """The `meta` format value this release writes."""
    return _value_encoder.encode({"marker": FORMAT_MARKER, "version": FORMAT_VERSION})


def decode_format(data: bytes) -> dict[str, Any]:
    """The fields of a `meta` format value (msgspec.DecodeError if it is not one)."""
    return _format_decoder.decode(data)
