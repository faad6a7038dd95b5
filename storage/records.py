"""The values every store hands across the port besides records: appends and index entries.

Plain msgspec structs shared by every store implementation and by audit code; this module
does no I/O and knows no store.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from datetime import datetime

import msgspec

from ..events.codec import (
    SCHEMA_VERSION,
    SealedEnvelope,
    decode_event,
    encode_event,
    encode_record,
    with_salt,
)
from ..events.content import CONTENT_FIELDS, encode_redacted_form
from ..events.model import Envelope, Event, UnknownEvent
from ..events.projections import SessionInfo
from .hashing import HASH_SIZE, commitment, encoded_bytes_length, extents
from .ids import validate_session_id
from .leases import Lease

SALT_SIZE = 16
"""Random bytes per record that key its content's commitment (removed with the content)."""
SALT_POOL_BYTES = 64 * 1024
"""Salts are cut from this much `os.urandom` at a time (one system call per 4,096 salts)."""
_NO_EXTENTS = bytes(8)
_blake2b = hashlib.blake2b

StoredValue = tuple[int, bytes]
"""A record as kept: its position and its stored bytes (the 32-byte BLAKE2b hash of the
record, then the record itself)."""


class IndexEntry(msgspec.Struct, frozen=True, gc=False):
    """A session's entry in the materialised index: its info and its last record's hash."""

    info: SessionInfo
    last_hash: bytes


class SessionAppend(msgspec.Struct, frozen=True):
    """One session's part of an atomic multi-session append."""

    session_id: str
    events: Sequence[Event | UnknownEvent]
    expected_version: int
    recorded_at: Sequence[datetime] | None = None
    lease: Lease | None = None
    """When given, the append commits only while this is still the session's lease."""
    release_lease: bool = False
    """With `lease`: let the lease go in the same step, once the events are written."""


def checked_append(append: SessionAppend) -> SessionAppend:
    """The append with its events and times as lists, after checking id, version and times."""
    validate_session_id(append.session_id)
    expected_version = append.expected_version
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise TypeError("expected_version must be an int")
    events = list(append.events)
    times = list(append.recorded_at) if append.recorded_at is not None else None
    if times is not None and len(times) != len(events):
        raise ValueError("recorded_at needs one time per event")
    if append.lease is not None and append.lease.session_id != append.session_id:
        raise ValueError("an append's lease must be its own session's")
    if append.release_lease and append.lease is None:
        raise ValueError("release_lease needs the lease to release")
    return SessionAppend(append.session_id, events, expected_version, times, append.lease,
                         append.release_lease)


def distinct_sessions(session_ids: Sequence[str]) -> None:
    """Refuse an atomic append that names a session twice."""
    if len(set(session_ids)) != len(session_ids):
        raise ValueError("an atomic append names a session twice: join its events instead")


class ContentSeal(msgspec.Struct, frozen=True, gc=False):
    """What a format-2 record adds for an event with content: the encoded redacted form and
    the commitment (see `events.codec.SealedEnvelope`)."""

    redacted: bytes
    commitment: bytes


class EncodedAppend(msgspec.Struct):
    """One session's append, checked and encoded in the caller's thread, as every store's
    writer takes it: the events, their MessagePack bytes, the expected version, original
    times (import), the lease the append must still hold (and whether to let it go), and
    each event's content seal (None for an event without content, or when not asked for)."""

    session_id: str
    events: Sequence[Event | UnknownEvent]
    encoded: list[bytes]
    expected_version: int
    recorded_at: Sequence[datetime] | None = None
    lease: Lease | None = None
    release_lease: bool = False
    seals: list[ContentSeal | None] | None = None


def content_seal(event: Event | UnknownEvent, encoded: bytes) -> ContentSeal | None:
    """The content seal of an event, given its encoded bytes with their salt (None if its
    type has no content)."""
    if type(event) not in CONTENT_FIELDS or isinstance(event, UnknownEvent):
        return None
    return ContentSeal(redacted=encode_redacted_form(event), commitment=commitment(encoded))


class _SaltPool:
    """Random bytes from `os.urandom`, handed out once each, SALT_POOL_BYTES at a time;
    emptied in a forked child, so two processes never share a salt. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0

    def take(self, size: int) -> bytes:
        """`size` random bytes no one else was given."""
        with self._lock:
            if self._offset + size > len(self._buffer):
                self._buffer = os.urandom(max(SALT_POOL_BYTES, size))
                self._offset = 0
            start = self._offset
            self._offset += size
            return self._buffer[start:self._offset]

    def forget(self) -> None:
        """Drop what is left (in a forked child: the parent hands those bytes out too)."""
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0


_salts = _SaltPool()
os.register_at_fork(after_in_child=_salts.forget)


def salted(events: Sequence[Event | UnknownEvent], encoded: list[bytes]) -> list[bytes]:
    """The encoded events, each event with content holding a fresh random salt."""
    if not any(type(event) in CONTENT_FIELDS for event in events):
        return encoded
    randomness = _salts.take(SALT_SIZE * len(events))
    return [with_salt(data, randomness[index * SALT_SIZE:(index + 1) * SALT_SIZE])
            if type(event) in CONTENT_FIELDS else data
            for index, (event, data) in enumerate(zip(events, encoded, strict=True))]


def seal_of_stored_event(encoded: bytes, schema_version: int) -> ContentSeal | None:
    """The content seal of an event kept encoded with its salt (a PostgreSQL row before its
    seal): a function of the bytes, so a seal redone after a crash is the same."""
    return content_seal(decode_event(encoded, schema_version), encoded)


def encode_append(append: SessionAppend, *, seal: bool = True) -> EncodedAppend:
    """Validate and encode one session's append (in the caller's thread), each event with
    content salted; with `seal`, the content seals too (a store that seals later,
    PostgreSQL, makes them then from the salted bytes)."""
    checked = checked_append(append)
    encoded = salted(checked.events, [encode_event(event) for event in checked.events])
    return EncodedAppend(
        session_id=checked.session_id,
        events=checked.events,
        encoded=encoded,
        expected_version=checked.expected_version,
        recorded_at=checked.recorded_at,
        lease=checked.lease,
        release_lease=checked.release_lease,
        seals=([content_seal(event, data) for event, data in zip(checked.events, encoded,
                                                                   strict=True)]
               if seal else None),
    )


def stored_record(
    position: int,
    session_id: str,
    version: int,
    recorded_at: datetime,
    prev_session_hash: bytes,
    prev_log_hash: bytes,
    event: bytes,
    seal: ContentSeal | None,
    schema_version: int = SCHEMA_VERSION,
) -> tuple[bytes, bytes]:
    """A record's stored bytes and its chain hash: format 2 with the content seal, else the
    envelope hashed whole."""
    if seal is None:
        record = encode_record(Envelope(
            position=position, session_id=session_id, version=version,
            recorded_at=recorded_at, schema_version=schema_version,
            prev_session_hash=prev_session_hash, prev_log_hash=prev_log_hash,
            event=msgspec.Raw(event),
        ))
        return record, _blake2b(record, digest_size=HASH_SIZE).digest()
    seal_content = seal.redacted + seal.commitment + _NO_EXTENTS
    record = encode_record(SealedEnvelope(
        position=position, session_id=session_id, version=version,
        recorded_at=recorded_at, schema_version=schema_version,
        prev_session_hash=prev_session_hash, prev_log_hash=prev_log_hash,
        event=msgspec.Raw(event), seal=seal_content,
    ))
    seal_element = encoded_bytes_length(len(seal_content))
    event_end = len(record) - seal_element
    event_start = event_end - len(event)
    record = record[:-8] + extents(event_start, seal_element)
    return record, _blake2b(record[:event_start] + record[event_end:],
                            digest_size=HASH_SIZE).digest()
