"""MemoryStore: the in-memory reference store, implementing the whole store port.

For fast actor tests and for users' own tests: it keeps the records as the LMDB store does
(the same envelope bytes and BLAKE2b hashes, so the same events appended at the same times
give the same hash chains), raises the same errors, verifies through the same walk and
follows appends with the same subscription. Thread-safe (one lock; appends are atomic and
serialised), not durable, and seen by this process only.

`open_store("memory:")` gives a new private store; `open_store("memory:NAME")` gives the
process's store of that name, whose records outlive its handles (reopen it to see them),
like a ledger directory would, until `forget_memory_store(NAME)`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone

import msgspec

from ..errors import (
    ConcurrencyError,
    LedgerClosedError,
    LedgerError,
    LedgerMissingError,
    StaleLeaseError,
    UnknownSessionError,
)
from ..events.codec import SCHEMA_VERSION, decode_record
from ..events.model import Event, Recorded, UnknownEvent
from ..events.projections import ProjectionError, SessionInfo, evolve
from .hashing import GENESIS, HASH_SIZE, Head, record_hash
from .ids import validate_session_id
from .leases import (
    Lease,
    LeaseOwner,
    LeaseRequest,
    acquired,
    fences,
    granted_as_expected,
    released,
    renewed,
)
from .records import (
    EncodedAppend,
    IndexEntry,
    SessionAppend,
    StoredValue,
    checked_append,
    distinct_sessions,
    encode_append,
    stored_record,
)
from .redaction import plan_redaction
from .subscription import Subscription
from .verbatim import plan_verbatim
from .verification import VerifyReport, verify_snapshot

MEMORY_SCHEME = "memory:"
READ_CHUNK = 1024


class MemoryData:
    """The records and indexes of one in-memory store, shared by its handles."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.appended = threading.Condition()
        self.values: list[bytes] = []  # values[position - 1]: stored hash + record bytes
        self.streams: dict[str, list[int]] = {}  # session id -> positions, by version
        self.index: dict[str, IndexEntry] = {}
        self.head = Head(0, GENESIS)
        self.leases: dict[str, Lease] = {}


_named: dict[str, MemoryData] = {}
_named_lock = threading.Lock()


def forget_memory_store(name: str) -> bool:
    """Drop the records of the named in-memory store; True if there was one."""
    with _named_lock:
        return _named.pop(name, None) is not None


class _Snapshot:
    """A copy of a store's log and indexes taken under its lock (see `LedgerSnapshot`)."""

    def __init__(self, data: MemoryData) -> None:
        with data.lock:
            self._values = list(data.values)
            self._streams = {sid: list(positions) for sid, positions in data.streams.items()}
            self._index = dict(data.index)
            self._head = data.head

    def records(self) -> Iterator[StoredValue]:
        """Every stored value with its position, in log order."""
        return enumerate(self._values, start=1)

    def head(self) -> Head:
        """The head as stored."""
        return self._head

    def stream_index(self) -> Iterator[tuple[str | None, int, int]]:
        """Every (session id, version, position) of the stream index, in key order."""
        for session_id in sorted(self._streams, key=str.encode):
            for version, position in enumerate(self._streams[session_id], start=1):
                yield session_id, version, position

    def stream_index_matches(self, positions: Mapping[str, list[int]]) -> bool:
        """Whether the stream index is exactly `positions`."""
        return self._streams == positions

    def index_entries(self) -> dict[str, IndexEntry]:
        """The whole session index as stored."""
        return dict(self._index)

    def index_matches(self, entries: Mapping[str, IndexEntry]) -> bool:
        """Whether the session index is exactly `entries`."""
        return self._index == entries


class MemoryStore:
    """An append-only, hash-chained store of session streams held in this process's memory."""

    def __init__(self, location: str = MEMORY_SCHEME, *, create: bool = True) -> None:
        if not location.startswith(MEMORY_SCHEME):
            raise ValueError(f"a memory store's location starts with {MEMORY_SCHEME!r}")
        self._location = location
        name = location[len(MEMORY_SCHEME):]
        if not name:
            if not create:  # a private store is new by definition
                raise LedgerMissingError(f"there is no ledger at {location}")
            self._data: MemoryData | None = MemoryData(name)
            return
        with _named_lock:
            data = _named.get(name)
            if data is None:
                if not create:
                    raise LedgerMissingError(f"there is no ledger at {location}")
                data = _named[name] = MemoryData(name)
        self._data = data

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def location(self) -> str:
        """`memory:` or `memory:NAME`, as opened."""
        return self._location

    @property
    def path(self) -> str:
        """The location (what `EventLog.path` is for a directory)."""
        return self._location

    def close(self) -> None:
        """Close this handle (a named store keeps its records for the next open)."""
        data, self._data = self._data, None
        if data is not None:
            with data.appended:
                data.appended.notify_all()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether this handle was closed."""
        return self._data is None

    @property
    def data(self) -> MemoryData:
        """The records underneath (raises once this handle is closed); tests may damage them."""
        if self._data is None:
            raise LedgerClosedError(f"the ledger at {self._location} is closed")
        return self._data

    # -- writing -------------------------------------------------------------------------

    def append(
        self,
        session_id: str,
        events: Iterable[Event | UnknownEvent],
        expected_version: int,
        *,
        lease: Lease | None = None,
        release_lease: bool = False,
    ) -> list[Recorded]:
        """Append events to a session atomically; ConcurrencyError if the version is stale,
        StaleLeaseError if `lease` is no longer the session's; `release_lease` lets it go
        with the append."""
        append = SessionAppend(session_id, list(events), expected_version, lease=lease,
                               release_lease=release_lease)
        if not append.events:
            checked_append(append)
            return []
        return self.append_atomically([append])[0]

    def append_atomically(self, appends: Sequence[SessionAppend]) -> list[list[Recorded]]:
        """Append to several sessions at once: all commit, or (a stale version) none does."""
        checked = [encode_append(append) for append in appends]
        distinct_sessions([append.session_id for append in checked])
        written = self._append_encoded(checked, None)
        assert written is not None  # only a lease request can go ungranted
        return written[1]

    def append_taking_lease(
        self,
        session_id: str,
        events: Iterable[Event | UnknownEvent],
        expected_version: int,
        request: LeaseRequest,
    ) -> tuple[Lease, list[Recorded]] | None:
        """Take the session's lease as `request` expects and append `events` under it, under
        one hold of the lock: None (nothing changed) if the lease is not granted so;
        ConcurrencyError (lease not taken) if the version is stale."""
        if request.lease.session_id != session_id:
            raise ValueError("the lease to take must be the append's own session's")
        append = encode_append(SessionAppend(session_id, list(events), expected_version))
        written = self._append_encoded([append], request)
        if written is None or written[0] is None:
            return None
        return written[0], written[1][0]

    def _append_encoded(
        self, checked: list[EncodedAppend], take_lease: LeaseRequest | None
    ) -> tuple[Lease | None, list[list[Recorded]]] | None:
        """Check leases and versions, then keep every append (or none), under the lock;
        with `take_lease`, the first append's session's lease is granted as it asks first
        (None, nothing changed, if it is not). Returns the lease granted and the records."""
        data = self.data
        granted: Lease | None = None
        with data.lock:
            if take_lease is not None:
                session_id = take_lease.lease.session_id
                granted = granted_as_expected(data.leases.get(session_id), take_lease,
                                              self.clock())
                if granted is None:
                    return None
            for append in checked:
                if append.lease is not None and not fences(data.leases.get(append.session_id),
                                                           append.lease):
                    raise StaleLeaseError(append.session_id, append.lease.epoch)
                entry = data.index.get(append.session_id)
                current = entry.info.version if entry is not None else 0
                if current != append.expected_version:
                    raise ConcurrencyError(append.session_id, append.expected_version, current)
            position, log_hash = data.head.position, data.head.hash
            staged: list[_Staged] = []
            for append in checked:
                stage = _stage(data, append, position, log_hash)
                staged.append(stage)
                position, log_hash = stage.head.position, stage.head.hash
            for stage in staged:  # nothing can fail from here on: all or nothing
                data.values.extend(stage.values)
                data.streams.setdefault(stage.entry.info.session_id, []).extend(
                    range(stage.head.position - len(stage.values) + 1, stage.head.position + 1)
                )
                data.index[stage.entry.info.session_id] = stage.entry
                data.head = stage.head
            for append in checked:
                freed = (released(data.leases.get(append.session_id), append.lease)
                         if append.release_lease and append.lease is not None else None)
                if freed is not None:
                    data.leases[append.session_id] = freed
            if granted is not None:
                data.leases[granted.session_id] = granted
            written = [stage.records for stage in staged]
        with data.appended:
            data.appended.notify_all()
        return granted, written

    def append_verbatim(self, records: Sequence[bytes]) -> Head:
        """Append stored records exactly as they are (an export's bytes): same positions,
        links and hashes; all or nothing."""
        checked = [bytes(record) for record in records]
        if not checked:
            return self.head()
        decoded = [decode_record(record) for record in checked]
        data = self.data
        with data.lock:
            plan = plan_verbatim(data.head, checked, decoded, data.index.get)
            if isinstance(plan, Exception):
                raise plan
            for recorded, value in plan.values:
                data.values.append(value)
                data.streams.setdefault(recorded.session_id, []).append(recorded.position)
            data.index.update(plan.entries)
            data.head = plan.head
        with data.appended:
            data.appended.notify_all()
        return plan.head

    def redact(
        self, session_id: str, version: int | None, *, reason: str = "",
        redacted_by: str | None = None,
    ) -> list[Recorded]:
        """Remove the content of one version of a session (None: of every record that still
        has some) and append a Redacted event for each, atomically; returns those records."""
        validate_session_id(session_id)
        data = self.data
        with data.lock:
            entry = data.index.get(session_id)
            if entry is None:
                raise UnknownSessionError(f"Session not found: {session_id}")
            positions = data.streams[session_id]
            values = [(position, data.values[position - 1]) for position in positions]
            plan = plan_redaction(session_id, values, version, reason=reason,
                                  redacted_by=redacted_by)
            append = encode_append(SessionAppend(session_id, plan.events, entry.info.version))
            refolded = IndexEntry(info=plan.info, last_hash=entry.last_hash)
            stage = None
            if append.events:
                data.index[session_id] = refolded  # _stage folds on top of it
                try:
                    stage = _stage(data, append, data.head.position, data.head.hash)
                finally:
                    data.index[session_id] = entry
            for position, value in plan.rewrites:  # nothing can fail from here on
                data.values[position - 1] = value
            data.index[session_id] = refolded
            if stage is not None:
                data.values.extend(stage.values)
                positions.extend(range(stage.head.position - len(stage.values) + 1,
                                       stage.head.position + 1))
                data.index[session_id] = stage.entry
                data.head = stage.head
        if stage is not None:
            with data.appended:
                data.appended.notify_all()
        return stage.records if stage is not None else []

    # -- leases --------------------------------------------------------------------------

    def acquire_lease(
        self, session_id: str, owner: LeaseOwner, ttl: float, *,
        take_over: LeaseOwner | None = None,
    ) -> Lease | None:
        """Take the session's lease for `ttl` seconds, or None if a live owner holds it."""
        validate_session_id(session_id)
        data = self.data
        with data.lock:
            granted = acquired(data.leases.get(session_id), session_id, owner, ttl,
                               self.clock(), take_over)
            if granted is not None:
                data.leases[session_id] = granted
            return granted

    def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend a lease for `ttl` seconds from now; None if it was taken over."""
        data = self.data
        with data.lock:
            extended = renewed(data.leases.get(lease.session_id), lease, ttl, self.clock())
            if extended is not None:
                data.leases[lease.session_id] = extended
            return extended

    def release_lease(self, lease: Lease) -> bool:
        """Let a lease go at once (its epoch stays); whether it was still ours."""
        data = self.data
        with data.lock:
            freed = released(data.leases.get(lease.session_id), lease)
            if freed is not None:
                data.leases[lease.session_id] = freed
            return freed is not None

    def lease(self, session_id: str) -> Lease | None:
        """The session's lease record as stored, or None."""
        validate_session_id(session_id)
        return self.data.leases.get(session_id)

    def clock(self) -> float:
        """This process's wall clock, against which leases expire."""
        return time.time()

    # -- reading -------------------------------------------------------------------------

    def read_session(self, session_id: str, from_version: int = 1) -> list[Recorded]:
        """One session's records from a version on (empty if it has none)."""
        return [decode_record(value[HASH_SIZE:])
                for _, value in self.read_session_raw(session_id, from_version)]

    def read_session_raw(self, session_id: str, from_version: int = 1) -> list[StoredValue]:
        """One session's records as stored, found through its stream index alone."""
        validate_session_id(session_id)
        data = self.data
        with data.lock:
            positions = data.streams.get(session_id, [])[max(from_version, 1) - 1:]
            return [(position, data.values[position - 1]) for position in positions]

    def latest(self, session_id: str, count: int) -> tuple[SessionInfo | None, list[Recorded]]:
        """A session's info as indexed and its last `count` records, as of one moment."""
        validate_session_id(session_id)
        data = self.data
        with data.lock:
            entry = data.index.get(session_id)
            if entry is None:
                return None, []
            positions = data.streams[session_id][-max(count, 1):]
            values = [data.values[position - 1] for position in positions]
        return entry.info, [decode_record(value[HASH_SIZE:]) for value in values]

    def read_all(self, from_position: int = 1, to_position: int | None = None) -> Iterator[Recorded]:
        """Every record from a position on (to `to_position`), in log order."""
        for _, value in self._read_values(from_position, to_position):
            yield decode_record(value[HASH_SIZE:])

    def read_raw(self, from_position: int = 1) -> Iterator[StoredValue]:
        """Every record as stored (position, hash + record bytes), in log order."""
        return self._read_values(from_position, None)

    def _read_values(self, from_position: int, to_position: int | None) -> Iterator[StoredValue]:
        """Stored values in chunks, the lock held only while a chunk is copied."""
        position = max(from_position, 1)
        while True:
            data = self.data
            with data.lock:
                end = len(data.values) if to_position is None else min(to_position,
                                                                        len(data.values))
                stop = min(end, position - 1 + READ_CHUNK)
                chunk = data.values[position - 1:stop]
            yield from enumerate(chunk, start=position)
            if stop >= end:
                return
            position = stop + 1

    def head(self) -> Head:
        """The last position and its hash (0 and the genesis hash when empty)."""
        return self.data.head

    def info(self, session_id: str) -> SessionInfo | None:
        """A session's info from the index, or None."""
        entry = self.index_entry(session_id)
        return entry.info if entry is not None else None

    def index_entry(self, session_id: str) -> IndexEntry | None:
        """A session's index entry as stored (its info and last hash), or None."""
        validate_session_id(session_id)
        return self.data.index.get(session_id)

    def require_info(self, session_id: str) -> SessionInfo:
        """A session's info from the index; raise UnknownSessionError if unknown."""
        info = self.info(session_id)
        if info is None:
            raise UnknownSessionError(f"Session not found: {session_id}")
        return info

    def version(self, session_id: str) -> int:
        """A session's current version (0 if it does not exist)."""
        info = self.info(session_id)
        return info.version if info is not None else 0

    def sessions(self) -> list[SessionInfo]:
        """Every session's info from the index."""
        data = self.data
        with data.lock:
            return [entry.info for entry in data.index.values()]

    def subscribe(self, from_position: int = 1, poll_interval: float = 0.2) -> Subscription:
        """Catch up from `from_position`, then follow live appends."""
        return Subscription(self.read_all, from_position, self.data.appended, poll_interval)

    # -- maintenance ---------------------------------------------------------------------

    def verify(
        self, saved_head: Head | None = None, *, progress: Callable[[int], None] | None = None
    ) -> VerifyReport:
        """Recompute both hash chains and the indexes of one snapshot; check a saved head."""
        return verify_snapshot(_Snapshot(self.data), saved_head, progress)

    def rebuild_index(self) -> int:
        """Recompute the session index from the log; returns the session count."""
        data = self.data
        with data.lock:
            entries: dict[str, IndexEntry] = {}
            for value in data.values:
                record = value[HASH_SIZE:]
                recorded = decode_record(record)
                entry = entries.get(recorded.session_id)
                info = entry.info if entry else SessionInfo(session_id=recorded.session_id)
                try:
                    info = evolve(info, recorded)
                except ProjectionError as error:
                    raise LedgerError(f"cannot rebuild the index: {error}") from None
                entries[recorded.session_id] = IndexEntry(info, record_hash(record))
            data.index = entries
            return len(entries)

    def copy_to(self, destination: str | os.PathLike[str], *, compact: bool = True) -> int:
        """Write the records into a new LMDB ledger directory with the same positions, times
        and hashes; returns its size in bytes. `compact` is moot here."""
        from .lmdb import EventLog  # only here: a memory store never loads lmdb otherwise

        with EventLog(destination) as target:
            if target.head().position:
                raise LedgerError(f"{destination} is not empty: copy into a new ledger")
            chunk: list[bytes] = []
            for _, value in self.read_raw():
                chunk.append(value[HASH_SIZE:])
                if len(chunk) >= READ_CHUNK:
                    target.append_verbatim(chunk)
                    chunk = []
            if chunk:
                target.append_verbatim(chunk)
            return target.disk_size()

    def disk_size(self) -> int:
        """Bytes the stored records take in memory."""
        data = self.data
        with data.lock:
            return sum(len(value) for value in data.values)

    def map_size(self) -> int:
        """Bytes reserved: the stored records' size (nothing is reserved ahead)."""
        return self.disk_size()


class _Staged(msgspec.Struct):
    """One session's part of an append, encoded and folded, not yet kept."""

    records: list[Recorded]
    values: list[bytes]
    entry: IndexEntry
    head: Head


def _stage(data: MemoryData, append: EncodedAppend, position: int, log_hash: bytes) -> _Staged:
    """Encode and fold one session's events after `position`; changes nothing. Under the lock."""
    session_id = append.session_id
    entry = data.index.get(session_id)
    version = entry.info.version if entry is not None else 0
    info = entry.info if entry is not None else SessionInfo(session_id=session_id)
    session_hash = entry.last_hash if entry is not None else GENESIS
    now = datetime.now(timezone.utc)
    times = append.recorded_at or [now] * len(append.events)
    records: list[Recorded] = []
    values: list[bytes] = []
    seals = append.seals or [None] * len(append.events)
    for event, encoded_event, seal, recorded_at in zip(append.events, append.encoded, seals,
                                                       times, strict=True):
        position += 1
        version += 1
        record, digest = stored_record(position, session_id, version, recorded_at,
                                       session_hash, log_hash, encoded_event, seal,
                                           SCHEMA_VERSION)
        recorded = Recorded(
            position=position, session_id=session_id, version=version,
            recorded_at=recorded_at, schema_version=SCHEMA_VERSION,
            prev_session_hash=session_hash, prev_log_hash=log_hash, event=event,
        )
        info = evolve(info, recorded)
        values.append(digest + record)
        records.append(recorded)
        session_hash = log_hash = digest
    return _Staged(records, values, IndexEntry(info=info, last_hash=session_hash),
                   Head(position, log_hash))
