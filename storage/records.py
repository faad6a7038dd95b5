"""The values every store hands across the port besides records: appends and index entries.

Plain msgspec structs shared by every store implementation and by audit code; this module
does no I/O and knows no store.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from ..events.codec import encode_event
from ..events.model import Event, UnknownEvent
from ..events.projections import SessionInfo
from .ids import validate_session_id
from .leases import Lease

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


class EncodedAppend(msgspec.Struct):
    """One session's append, checked and encoded in the caller's thread, as every store's
    writer takes it: the events, their MessagePack bytes, the expected version, original
    times (import), and the lease the append must still hold (and whether to let it go)."""

    session_id: str
    events: Sequence[Event | UnknownEvent]
    encoded: list[bytes]
    expected_version: int
    recorded_at: Sequence[datetime] | None = None
    lease: Lease | None = None
    release_lease: bool = False


def encode_append(append: SessionAppend) -> EncodedAppend:
    """Validate and encode one session's append (in the caller's thread)."""
    checked = checked_append(append)
    return EncodedAppend(
        session_id=checked.session_id,
        events=checked.events,
        encoded=[encode_event(event) for event in checked.events],
        expected_version=checked.expected_version,
        recorded_at=checked.recorded_at,
        lease=checked.lease,
        release_lease=checked.release_lease,
    )
