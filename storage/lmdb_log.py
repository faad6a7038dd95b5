"""EventLog: the embedded event store, an append-only, hash-chained log in one LMDB file.

Layout (named databases in one environment):
- `log`:      position (8-byte big-endian) -> the record's BLAKE2b-256 hash, then the record
              (MessagePack envelope + event); the stored hash pins a flipped byte to its record
- `streams`:  session id, NUL, version (8-byte big-endian) -> position
- `sessions`: session id -> index entry (the folded SessionInfo and the session's last hash)
- `meta`:     format marker and the head (last position + its record's hash)

Every append (through the group-commit writer) updates all four in one transaction, so the
index can never disagree with the log unless someone edits the file, which `verify` reports.
This module knows nothing of actors or agents.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec

from ..errors import ConcurrencyError, LedgerError, UnknownSessionError
from ..events.codec import (
    SCHEMA_VERSION,
    StoredEnvelope,
    decode_envelope,
    decode_record,
    encode_event,
    encode_record,
)
from ..events.model import Event, Recorded, UnknownEvent
from ..events.projections import ProjectionError, SessionInfo, evolve
from .environment import (
    DAMAGE_ERRORS,
    DEFAULT_MAP_SIZE,
    DEFAULT_MAX_MAP_SIZE,
    SharedEnvironment,
    damaged,
    open_environment,
    release_environment,
)
from .hashing import GENESIS, HASH_SIZE, Head, record_hash
from .ids import validate_session_id
from .subscription import Subscription
from .verification import VerifyReport, verify_log
from .writer import GroupCommitWriter

FORMAT_MARKER = b"chatledger-lmdb"
FORMAT_VERSION = 1
READ_CHUNK = 1024

_META_FORMAT = b"format"
_META_HEAD = b"head"


class IndexEntry(msgspec.Struct, frozen=True, gc=False):
    """A session's entry in the materialised index: its info and its last record's hash."""

    info: SessionInfo
    last_hash: bytes


_index_encoder = msgspec.msgpack.Encoder()
_index_decoder = msgspec.msgpack.Decoder(IndexEntry)
_format_decoder = msgspec.msgpack.Decoder(dict[str, Any])


def position_key(position: int) -> bytes:
    """The `log` key of a position."""
    return position.to_bytes(8, "big")


def stream_key(session_id: str, version: int) -> bytes:
    """The `streams` key of a session's version."""
    return session_id.encode() + b"\x00" + version.to_bytes(8, "big")


def decode_index_entry(data: bytes) -> IndexEntry:
    """Decode a `sessions` value."""
    return _index_decoder.decode(data)


def encode_index_entry(entry: IndexEntry) -> bytes:
    """Encode a `sessions` value."""
    return _index_encoder.encode(entry)


def _encode_head(position: int, digest: bytes) -> bytes:
    return position.to_bytes(8, "big") + digest


def _decode_head(data: bytes | None) -> Head:
    if data is None:
        return Head(0, GENESIS)
    return Head(int.from_bytes(data[:8], "big"), data[8:])


class _Append(msgspec.Struct):
    session_id: str
    events: Sequence[Event | UnknownEvent]
    encoded: list[bytes]
    expected_version: int
    recorded_at: Sequence[datetime] | None = None


class _AtomicAppends(msgspec.Struct):
    """Appends to several sessions that commit together or not at all (import)."""

    appends: list[_Append]


class SessionAppend(msgspec.Struct, frozen=True):
    """One session's part of an atomic multi-session append."""

    session_id: str
    events: Sequence[Event | UnknownEvent]
    expected_version: int
    recorded_at: Sequence[datetime] | None = None


def _encoded_append(append: SessionAppend) -> _Append:
    """Validate and encode one session's append before it reaches the writer thread."""
    validate_session_id(append.session_id)
    expected_version = append.expected_version
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise TypeError("expected_version must be an int")
    events = list(append.events)
    times = list(append.recorded_at) if append.recorded_at is not None else None
    if times is not None and len(times) != len(events):
        raise ValueError("recorded_at needs one time per event")
    return _Append(
        session_id=append.session_id,
        events=events,
        encoded=[encode_event(event) for event in events],
        expected_version=expected_version,
        recorded_at=times,
    )


class _Job(msgspec.Struct):
    function: Callable[[Any], Any]


class LedgerStore:
    """The per-process state of one ledger: its environment, writer and live-append signal."""

    def __init__(self, shared: SharedEnvironment) -> None:
        self.shared = shared
        self.log_db = shared.databases[b"log"]
        self.streams_db = shared.databases[b"streams"]
        self.sessions_db = shared.databases[b"sessions"]
        self.meta_db = shared.databases[b"meta"]
        self.appended = threading.Condition()
        self.writer: GroupCommitWriter | None = None
        if not shared.readonly:
            self._initialise_format()
            self.writer = GroupCommitWriter(shared, self._apply_batch, self._notify)
        else:
            self._check_format()

    def _notify(self) -> None:
        with self.appended:
            self.appended.notify_all()

    def _initialise_format(self) -> None:
        with self.shared.transaction(write=True) as txn:
            marker = txn.get(_META_FORMAT, db=self.meta_db)
            if marker is None:
                if txn.stat(self.log_db)["entries"]:
                    raise LedgerError(f"{self.shared.path} holds a log without a format marker")
                txn.put(
                    _META_FORMAT,
                    _index_encoder.encode({"marker": FORMAT_MARKER, "version": FORMAT_VERSION}),
                    db=self.meta_db,
                )
            else:
                self._check_marker(marker)

    def _check_format(self) -> None:
        with self.shared.transaction() as txn:
            marker = txn.get(_META_FORMAT, db=self.meta_db)
        if marker is None:
            raise LedgerError(f"{self.shared.path} is not a chatledger ledger")
        self._check_marker(marker)

    def _check_marker(self, marker: bytes) -> None:
        try:
            fields = _format_decoder.decode(marker)
        except msgspec.DecodeError:
            raise LedgerError(f"{self.shared.path} is not a chatledger ledger") from None
        if fields.get("marker") != FORMAT_MARKER:
            raise LedgerError(f"{self.shared.path} is not a chatledger ledger")
        if int(fields.get("version", 0)) > FORMAT_VERSION:
            raise LedgerError(
                f"{self.shared.path} was written by a newer chatledger (storage format "
                f"{fields.get('version')}, this release reads {FORMAT_VERSION}): upgrade chatledger"
            )

    def _apply_batch(self, txn: Any, batch: list[Any]) -> list[Any]:
        """Apply a batch of appends and jobs in the writer's transaction. Writer thread only."""
        cursor = txn.cursor(db=self.log_db)
        next_position = int.from_bytes(cursor.key(), "big") + 1 if cursor.last() else 1
        head = _decode_head(txn.get(_META_HEAD, db=self.meta_db))
        log_hash = head.hash
        touched: dict[str, IndexEntry | None] = {}
        results: list[Any] = []
        for request in batch:
            payload = request.payload
            if isinstance(payload, _Job):
                # Earlier appends of this batch must be in place before a job reads the file.
                self._flush(txn, touched, head, next_position, log_hash)
                results.append(payload.function(txn))
                # A job may rewrite anything: start the batch state afresh after it.
                next_position = int.from_bytes(cursor.key(), "big") + 1 if cursor.last() else 1
                head = _decode_head(txn.get(_META_HEAD, db=self.meta_db))
                log_hash = head.hash
                touched.clear()
                continue
            result, next_position, log_hash = self._apply_appends(
                txn, payload.appends, touched, next_position, log_hash
            )
            results.append(result)
        self._flush(txn, touched, head, next_position, log_hash)
        return results

    def _flush(
        self,
        txn: Any,
        touched: dict[str, IndexEntry | None],
        head: Head,
        next_position: int,
        log_hash: bytes,
    ) -> None:
        """Write the batch's index entries and head so far. Writer thread only."""
        for session_id, entry in touched.items():
            if entry is not None:
                txn.put(session_id.encode(), encode_index_entry(entry), db=self.sessions_db)
        if next_position - 1 != head.position:
            txn.put(_META_HEAD, _encode_head(next_position - 1, log_hash), db=self.meta_db)

    def index_entry_in(self, txn: Any, session_id: str) -> IndexEntry | None:
        """A session's index entry as `txn` sees it (None if the session is unknown)."""
        data = txn.get(session_id.encode(), db=self.sessions_db)
        return decode_index_entry(data) if data is not None else None

    def _index_entry(
        self, txn: Any, session_id: str, touched: dict[str, IndexEntry | None]
    ) -> IndexEntry | None:
        if session_id in touched:
            return touched[session_id]
        return self.index_entry_in(txn, session_id)

    def _apply_appends(
        self,
        txn: Any,
        appends: list[_Append],
        touched: dict[str, IndexEntry | None],
        next_position: int,
        log_hash: bytes,
    ) -> tuple[list[list[Recorded]] | ConcurrencyError, int, bytes]:
        """Check every expected version, then write all the appends (or none, returning the
        conflict); returns the result, the next free position and the log hash."""
        entries: dict[str, IndexEntry | None] = {}
        for append in appends:
            entry = self._index_entry(txn, append.session_id, touched)
            current = entry.info.version if entry is not None else 0
            if current != append.expected_version:
                return (ConcurrencyError(append.session_id, append.expected_version, current),
                        next_position, log_hash)
            entries[append.session_id] = entry
        written: list[list[Recorded]] = []
        for append in appends:
            recorded_list, next_position, log_hash = self._write_append(
                txn, append, entries[append.session_id], touched, next_position, log_hash
            )
            written.append(recorded_list)
        return written, next_position, log_hash

    def _write_append(
        self,
        txn: Any,
        payload: _Append,
        entry: IndexEntry | None,
        touched: dict[str, IndexEntry | None],
        next_position: int,
        log_hash: bytes,
    ) -> tuple[list[Recorded], int, bytes]:
        """Write one session's events after its index `entry` (version already checked);
        returns the records, the next free position and the new log hash. Writer thread only."""
        session_id = payload.session_id
        version = entry.info.version if entry is not None else 0
        info = entry.info if entry is not None else SessionInfo(session_id=session_id)
        session_hash = entry.last_hash if entry is not None else GENESIS
        now = datetime.now(timezone.utc)
        times = payload.recorded_at or [now] * len(payload.events)
        recorded_list: list[Recorded] = []
        for event, encoded_event, recorded_at in zip(
            payload.events, payload.encoded, times, strict=True
        ):
            version += 1
            envelope = StoredEnvelope(
                position=next_position,
                session_id=session_id,
                version=version,
                recorded_at=recorded_at,
                schema_version=SCHEMA_VERSION,
                prev_session_hash=session_hash,
                prev_log_hash=log_hash,
                event=msgspec.Raw(encoded_event),
            )
            record = encode_record(envelope)
            digest = record_hash(record)
            txn.put(position_key(next_position), digest + record, db=self.log_db, append=True)
            txn.put(stream_key(session_id, version), position_key(next_position),
                    db=self.streams_db)
            recorded = Recorded(
                position=next_position,
                session_id=session_id,
                version=version,
                recorded_at=recorded_at,
                schema_version=SCHEMA_VERSION,
                prev_session_hash=session_hash,
                prev_log_hash=log_hash,
                event=event,
            )
            info = evolve(info, recorded)
            session_hash = digest
            log_hash = digest
            recorded_list.append(recorded)
            next_position += 1
        touched[session_id] = IndexEntry(info=info, last_hash=session_hash)
        return recorded_list, next_position, log_hash

    def close(self) -> None:
        """Stop the writer (after what is queued) and close the environment if last."""
        if self.writer is not None:
            self.writer.close()
        release_environment(self.shared)


_stores_lock = threading.Lock()


def _acquire_store(
    path: str | os.PathLike[str], map_size: int, max_map_size: int, readonly: bool
) -> LedgerStore:
    """Open (or share) the environment for `path` and its store; one reference per handle."""
    shared = open_environment(
        path, map_size=map_size, max_map_size=max_map_size, readonly=readonly
    )
    with _stores_lock:
        store: LedgerStore | None = shared.owner
        if store is None:
            try:
                store = LedgerStore(shared)
            except BaseException:
                release_environment(shared)
                raise
            shared.owner = store
        return store


def _release_store(store: LedgerStore) -> None:
    """Drop one handle's reference; the last one stops the writer and closes the file."""
    with _stores_lock:
        if store.shared.references > 1:
            release_environment(store.shared)
            return
        store.shared.owner = None
    store.close()


class EventLog:
    """An append-only, hash-chained event log in an LMDB directory (the embedded default store).

    Opening the same directory twice in one process shares one environment and one writer;
    several processes may open it at once (LMDB serialises their writers, and expected
    versions keep their appends correct).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        readonly: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self._store: LedgerStore | None = _acquire_store(path, map_size, max_map_size, readonly)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Close this handle; the environment closes with the last handle in the process."""
        store, self._store = self._store, None
        if store is not None:
            _release_store(store)

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether this handle was closed."""
        return self._store is None

    @property
    def store(self) -> LedgerStore:
        """The shared per-process state (raises once this handle is closed)."""
        if self._store is None:
            from ..errors import LedgerClosedError

            raise LedgerClosedError(f"the ledger at {self.path} is closed")
        return self._store

    # -- writing -------------------------------------------------------------------------

    def append(
        self,
        session_id: str,
        events: Iterable[Event | UnknownEvent],
        expected_version: int,
    ) -> list[Recorded]:
        """Append events to a session atomically; durable on return. Blocks the caller.

        `expected_version` is the session's current version (0 for a new session); if the
        session moved on, ConcurrencyError is raised and nothing is written.
        """
        append = _encoded_append(SessionAppend(session_id, list(events), expected_version))
        if not append.events:
            return []
        return self._submit([append])[0]

    def append_atomically(self, appends: Sequence[SessionAppend]) -> list[list[Recorded]]:
        """Append to several sessions in one transaction: all commit, or (on a stale expected
        version) none does. Original `recorded_at` times are kept
        when given (import)."""
        payloads = [_encoded_append(append) for append in appends]
        session_ids = [payload.session_id for payload in payloads]
        if len(set(session_ids)) != len(session_ids):
            raise ValueError("an atomic append names a session twice: join its events instead")
        return self._submit(payloads)

    def _submit(self, payloads: list[_Append]) -> list[list[Recorded]]:
        """Hand encoded appends to the writer as one all-or-nothing request; wait for it."""
        writer = self.store.writer
        if writer is None:
            raise LedgerError(f"the ledger at {self.path} is open read-only")
        result: list[list[Recorded]] = writer.submit(_AtomicAppends(appends=payloads))
        return result

    def copy_to(self, destination: str | os.PathLike[str], *, compact: bool = True) -> int:
        """Write a consistent copy of the ledger to an empty directory (compacted: free pages
        dropped, since LMDB files never shrink); returns the copy's size in bytes."""
        target = Path(destination)
        target.mkdir(parents=True, exist_ok=True)
        if any(target.iterdir()):
            raise LedgerError(f"{target} is not empty: compact writes into an empty directory")
        self.store.shared.env.copy(os.fspath(target), compact=compact)
        return sum(file.stat().st_size for file in target.iterdir())

    def run_in_writer(self, function: Callable[[Any], Any]) -> Any:
        """Run `function(txn)` in the writer's transaction (maintenance: rebuild, import)."""
        writer = self.store.writer
        if writer is None:
            raise LedgerError(f"the ledger at {self.path} is open read-only")
        return writer.submit(_Job(function=function))

    # -- reading -------------------------------------------------------------------------

    def read_session(self, session_id: str, from_version: int = 1) -> list[Recorded]:
        """The records of one session from `from_version` on (empty if it has none)."""
        validate_session_id(session_id)
        with self.store.shared.transaction() as txn:
            entry = self.store.index_entry_in(txn, session_id)
            if entry is None:
                return []
            values = self._session_values(txn, session_id, from_version, entry.info.version)
            return [decode_record(value[HASH_SIZE:]) for _, value in values]

    def read_session_raw(self, session_id: str, from_version: int = 1) -> list[tuple[int, bytes]]:
        """One session's stored values (hash + record) with their positions, for audits: it
        follows the stream index alone, trusting no session index entry."""
        validate_session_id(session_id)
        store = self.store
        start = stream_key(session_id, max(from_version, 1))
        prefix = session_id.encode() + b"\x00"
        positions: list[bytes] = []
        with store.shared.transaction() as txn:
            cursor = txn.cursor(db=store.streams_db)
            if cursor.set_range(start):
                for key, position in cursor:
                    if not key.startswith(prefix):
                        break
                    positions.append(position)
            found = txn.cursor(db=store.log_db).getmulti(positions) if positions else []
        if len(found) != len(positions):
            raise LedgerError(
                f"the stream index of {session_id!r} points at a missing record: "
                "run `chatledger verify`"
            )
        return [(int.from_bytes(key, "big"), value) for key, value in found]

    def latest(self, session_id: str, count: int) -> tuple[SessionInfo | None, list[Recorded]]:
        """A session's info as indexed and its last `count` records, read in one transaction
        (what an actor needs to come back to life without folding the whole stream)."""
        validate_session_id(session_id)
        with self.store.shared.transaction() as txn:
            entry = self.store.index_entry_in(txn, session_id)
            if entry is None:
                return None, []
            info = entry.info
            from_version = max(1, info.version - max(count, 1) + 1)
            values = self._session_values(txn, session_id, from_version, info.version)
            return info, [decode_record(value[HASH_SIZE:]) for _, value in values]

    def _session_values(
        self, txn: Any, session_id: str, from_version: int, last_version: int
    ) -> list[tuple[Any, Any]]:
        """(log key, stored value) of versions `from_version`..`last_version` of a session,
        found through the stream index, whose keys for a session are contiguous: exactly
        that many entries are read from the first one on, and the last one is checked."""
        store = self.store
        from_version = max(from_version, 1)
        count = last_version - from_version + 1
        if count <= 0:
            return []
        cursor = txn.cursor(db=store.streams_db)
        positions: list[bytes] = []  # the stream index's values are the log's keys
        if cursor.set_key(stream_key(session_id, from_version)):
            positions = list(islice(cursor.iternext(keys=False, values=True), count))
        found = (txn.cursor(db=store.log_db).getmulti(positions)
                 if len(positions) == count else [])
        if len(found) != count or cursor.key() != stream_key(session_id, last_version):
            raise LedgerError(
                f"the stream index of {session_id!r} does not match its index entry "
                f"(versions {from_version}..{last_version}): run `chatledger verify`"
            )
        return found

    def read_all(self, from_position: int = 1, to_position: int | None = None) -> Iterator[Recorded]:
        """Every record from `from_position` on (to `to_position`), in order.

        The log is read in short transactions of READ_CHUNK stored values; each record is
        decoded only when the caller takes it, so the caller works on a record while it is
        still in the CPU cache (decoding a whole chunk first is 1.5x slower).
        """
        position = max(from_position, 1)
        while to_position is None or position <= to_position:
            values, position = self._read_values(position, to_position)
            for value in values:
                try:
                    recorded = decode_record(value[HASH_SIZE:])
                except DAMAGE_ERRORS as error:
                    raise damaged(self.store.shared.path, error) from None
                yield recorded
            if len(values) < READ_CHUNK:
                return

    def _read_values(self, position: int, to_position: int | None) -> tuple[list[bytes], int]:
        """Up to READ_CHUNK stored values from `position` (to `to_position`), and the
        position after the last one."""
        store = self.store
        values: list[bytes] = []
        with store.shared.transaction() as txn:
            cursor = txn.cursor(db=store.log_db)
            if not cursor.set_range(position_key(position)):
                return values, position
            if to_position is None:
                for value in cursor.iternext(keys=False, values=True):
                    values.append(value)
                    if len(values) >= READ_CHUNK:
                        break
            else:
                last_key = position_key(to_position)
                for key, value in cursor:
                    if key > last_key:
                        return values, to_position + 1
                    values.append(value)
                    if len(values) >= READ_CHUNK:
                        break
            next_position = int.from_bytes(cursor.key(), "big") + 1 if values else position
        return values, next_position

    def read_raw(self, from_position: int = 1) -> Iterator[tuple[int, bytes]]:
        """Every stored value as (position, stored hash + record bytes), for verify and export."""
        store = self.store
        position = max(from_position, 1)
        while True:
            chunk: list[tuple[int, bytes]] = []
            with store.shared.transaction() as txn:
                cursor = txn.cursor(db=store.log_db)
                if cursor.set_range(position_key(position)):
                    for key, value in cursor:
                        chunk.append((int.from_bytes(key, "big"), value))
                        if len(chunk) >= READ_CHUNK:
                            break
            yield from chunk
            if len(chunk) < READ_CHUNK:
                return
            position = chunk[-1][0] + 1

    def head(self) -> Head:
        """The last position and its record's hash (0 and the genesis hash when empty)."""
        store = self.store
        with store.shared.transaction() as txn:
            return _decode_head(txn.get(_META_HEAD, db=store.meta_db))

    def version(self, session_id: str) -> int:
        """A session's current version (0 if it does not exist)."""
        info = self.info(session_id)
        return info.version if info is not None else 0

    def info(self, session_id: str) -> SessionInfo | None:
        """A session's info from the index (None if unknown)."""
        entry = self.index_entry(session_id)
        return entry.info if entry is not None else None

    def index_entry(self, session_id: str) -> IndexEntry | None:
        """A session's index entry as stored: its info and last hash (None if unknown)."""
        validate_session_id(session_id)
        with self.store.shared.transaction() as txn:
            return self.store.index_entry_in(txn, session_id)

    def require_info(self, session_id: str) -> SessionInfo:
        """A session's info from the index; raises UnknownSessionError if unknown."""
        info = self.info(session_id)
        if info is None:
            raise UnknownSessionError(f"Session not found: {session_id}")
        return info

    def sessions(self) -> list[SessionInfo]:
        """Every session's info, from the index (no replay)."""
        store = self.store
        result: list[SessionInfo] = []
        with store.shared.transaction() as txn:
            for value in txn.cursor(db=store.sessions_db).iternext(keys=False, values=True):
                result.append(decode_index_entry(value).info)
        return result

    def index_entries(self) -> dict[str, IndexEntry]:
        """The whole session index as stored (for verify)."""
        store = self.store
        with store.shared.transaction() as txn:
            return {
                key.decode(): decode_index_entry(value)
                for key, value in txn.cursor(db=store.sessions_db)
            }

    def stream_index(self) -> Iterator[tuple[bytes, int]]:
        """Every (streams key, position) pair, in key order (for verify)."""
        store = self.store
        start = b""
        while True:
            chunk: list[tuple[bytes, int]] = []
            with store.shared.transaction() as txn:
                cursor = txn.cursor(db=store.streams_db)
                if cursor.set_range(start) if start else cursor.first():
                    for key, value in cursor:
                        if key == start:
                            continue
                        chunk.append((key, int.from_bytes(value, "big")))
                        if len(chunk) >= READ_CHUNK:
                            break
            yield from chunk
            if len(chunk) < READ_CHUNK:
                return
            start = chunk[-1][0]

    def subscribe(self, from_position: int = 1, poll_interval: float = 0.2) -> Subscription:
        """Catch up from `from_position`, then follow live appends (of any process)."""
        return Subscription(self, from_position, self.store.appended, poll_interval)

    def count(self) -> int:
        """How many records the log holds."""
        store = self.store
        with store.shared.transaction() as txn:
            return int(txn.stat(store.log_db)["entries"])

    def disk_size(self) -> int:
        """Bytes the ledger's data file takes on disk."""
        return os.path.getsize(os.path.join(self.store.shared.path, "data.mdb"))

    def map_size(self) -> int:
        """The current LMDB map size in bytes."""
        return int(self.store.shared.env.info()["map_size"])

    # -- integrity -----------------------------------------------------------------------

    def verify(
        self,
        saved_head: Head | None = None,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> VerifyReport:
        """Recompute both hash chains and the indexes; check a saved head if given."""
        return verify_log(self, saved_head, progress=progress)

    def rebuild_index(self) -> int:
        """Recompute the session index from the log in one write; returns the session count."""

        def rebuild(txn: Any) -> int:
            store = self.store
            entries: dict[str, IndexEntry] = {}
            cursor = txn.cursor(db=store.log_db)
            for value in cursor.iternext(keys=False, values=True):
                recorded = decode_record(value[HASH_SIZE:])
                entry = entries.get(recorded.session_id)
                info = entry.info if entry else SessionInfo(session_id=recorded.session_id)
                try:
                    info = evolve(info, recorded)
                except ProjectionError as error:
                    raise LedgerError(f"cannot rebuild the index: {error}") from None
                entries[recorded.session_id] = IndexEntry(info=info, last_hash=record_hash(value[HASH_SIZE:]))
            txn.drop(store.sessions_db, delete=False)
            for session_id, entry in entries.items():
                txn.put(session_id.encode(), encode_index_entry(entry), db=store.sessions_db)
            return len(entries)

        result: int = self.run_in_writer(rebuild)
        return result

    def wait_for_append(self, after_position: int, timeout: float) -> bool:
        """Block until the head passes `after_position` (this process's appends wake it early)."""
        deadline = time.monotonic() + timeout
        condition = self.store.appended
        while self.head().position <= after_position:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with condition:
                condition.wait(min(remaining, 0.2))
        return True


def record_envelope(data: bytes) -> StoredEnvelope:
    """Decode a stored record's envelope only (the event stays encoded)."""
    return decode_envelope(data)
