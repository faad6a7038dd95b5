"""The values every store hands across the port besides records: appends and index entries.

Plain msgspec structs shared by every store implementation and by audit code; this module
does no I/O and knows no store.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from datetime import datetime

import msgspec

from ..events.codec import SCHEMA_VERSION, SealedEnvelope, decode_event, encode_event, encode_record
from ..events.content import encode_redacted_form, has_content
from ..events.model import Envelope, Event, UnknownEvent
from ..events.projections import SessionInfo
from .hashing import HASH_SIZE, commitment, encoded_bytes_length, hashed_part
from .ids import validate_session_id
from .leases import Lease

SALT_SIZE = 16
"""Random bytes per record that key its content's commitment (removed with the content)."""
_SALT_LENGTH = encoded_bytes_length(SALT_SIZE)
_COMMITMENT_LENGTH = encoded_bytes_length(HASH_SIZE)
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
    """What a format-2 record adds for an event with content: the salt, the encoded redacted
    form and the commitment (see `events.codec.SealedEnvelope`)."""

    salt: bytes
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


def content_seal(event: Event | UnknownEvent, encoded: bytes, salt: bytes) -> ContentSeal | None:
    """The content seal of an event (None if its type has no content)."""
    if isinstance(event, UnknownEvent) or not has_content(event):
        return None
    return ContentSeal(salt=salt, redacted=encode_redacted_form(event),
                       commitment=commitment(salt, encoded))


def content_seals(events: Sequence[Event | UnknownEvent], encoded: Sequence[bytes]
                  ) -> list[ContentSeal | None]:
    """Each event's content seal, with fresh random salts (one system call for them all)."""
    randomness = os.urandom(SALT_SIZE * len(events))
    return [content_seal(event, data, randomness[index * SALT_SIZE:(index + 1) * SALT_SIZE])
            for index, (event, data) in enumerate(zip(events, encoded, strict=True))]


def seal_of_stored_event(encoded: bytes, schema_version: int) -> ContentSeal | None:
    """The content seal of an event kept encoded (a PostgreSQL row before its seal)."""
    return content_seal(decode_event(encoded, schema_version), encoded, os.urandom(SALT_SIZE))


def encode_append(append: SessionAppend, *, seal: bool = True) -> EncodedAppend:
    """Validate and encode one session's append (in the caller's thread); with `seal`, the
    content seals too (a store that seals later, PostgreSQL, makes its own then)."""
    checked = checked_append(append)
    encoded = [encode_event(event) for event in checked.events]
    return EncodedAppend(
        session_id=checked.session_id,
        events=checked.events,
        encoded=encoded,
        expected_version=checked.expected_version,
        recorded_at=checked.recorded_at,
        lease=checked.lease,
        release_lease=checked.release_lease,
        seals=content_seals(checked.events, encoded) if seal else None,
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
    record = encode_record(SealedEnvelope(
        position=position, session_id=session_id, version=version,
        recorded_at=recorded_at, schema_version=schema_version,
        prev_session_hash=prev_session_hash, prev_log_hash=prev_log_hash,
        event=msgspec.Raw(event), salt=seal.salt, redacted=msgspec.Raw(seal.redacted),
        commitment=seal.commitment,
    ))
    hashed = hashed_part(record, len(event), _SALT_LENGTH,
                         len(seal.redacted) + _COMMITMENT_LENGTH)
    return record, _blake2b(hashed, digest_size=HASH_SIZE).digest()
