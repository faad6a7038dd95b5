"""EventLog: the embedded store, an append-only, hash-chained log in one LMDB directory.

A handle over the process's shared `LedgerStore` (environment + group-commit writer):
appends go through the writer, reads take short read transactions, verify reads one
snapshot. The key layout is in `layout`. It implements the whole store port
(`storage.port.AuditStore`); code above `storage/` opens it through `open_store` and never
names it. This module knows nothing of actors or agents.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from ...errors import LedgerClosedError, LedgerError, UnknownSessionError
from ...events.codec import decode_record
from ...events.model import Event, Recorded, UnknownEvent
from ...events.projections import ProjectionError, SessionInfo, evolve
from ..hashing import HASH_SIZE, Head, record_hash
from ..ids import validate_session_id
from ..leases import (
    Lease,
    LeaseOwner,
    LeaseRequest,
    acquired,
    encode_lease,
    released,
    renewed,
)
from ..records import (
    EncodedAppend,
    IndexEntry,
    SessionAppend,
    StoredValue,
    distinct_sessions,
    encode_append,
)
from ..subscription import Subscription
from ..verification import VerifyReport
from . import layout
from .environment import DAMAGE_ERRORS, DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE, damaged
from .store import AtomicAppends, LedgerStore, WriterJob, acquire_store, release_store
from .verify import verify_log

READ_CHUNK = 1024


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
        self._store: LedgerStore | None = acquire_store(path, map_size, max_map_size, readonly)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def location(self) -> str:
        """The ledger directory, as given."""
        return self.path

    def close(self) -> None:
        """Close this handle; the environment closes with the last handle in the process."""
        store, self._store = self._store, None
        if store is not None:
            release_store(store)

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
            raise LedgerClosedError(f"the ledger at {self.path} is closed")
        return self._store

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
        """Append events to a session atomically; durable on return. Blocks the caller.

        `expected_version` is the session's current version (0 for a new session); if the
        session moved on, ConcurrencyError is raised and nothing is written. With `lease`,
        the writer's transaction also checks that it is still the session's lease
        (StaleLeaseError, nothing written, if another process took the session over), and
        `release_lease` lets it go in that same transaction.
        """
        append = encode_append(SessionAppend(session_id, list(events), expected_version,
                                             lease=lease, release_lease=release_lease))
        if not append.events:
            return []
        return self._submit([append])[0]

    def append_atomically(self, appends: Sequence[SessionAppend]) -> list[list[Recorded]]:
        """Append to several sessions in one transaction: all commit, or (on a stale expected
        version) none does. Original `recorded_at` times are kept when given (import)."""
        payloads = [encode_append(append) for append in appends]
        distinct_sessions([payload.session_id for payload in payloads])
        return self._submit(payloads)

    def append_taking_lease(
        self,
        session_id: str,
        events: Iterable[Event | UnknownEvent],
        expected_version: int,
        request: LeaseRequest,
    ) -> tuple[Lease, list[Recorded]] | None:
        """Take the session's lease as `request` expects and append `events` under it, in one
        writer transaction (one durable commit): None (nothing written) if the lease is not
        granted so; ConcurrencyError (lease not taken) if the version is stale. Blocks the
        caller for one (group) commit."""
        if request.lease.session_id != session_id:
            raise ValueError("the lease to take must be the append's own session's")
        append = encode_append(SessionAppend(session_id, list(events), expected_version))
        result: tuple[Lease, list[list[Recorded]]] | None = self.store.submit(
            AtomicAppends([append], take_lease=request), self.path)
        return (result[0], result[1][0]) if result is not None else None

    def append_verbatim(self, records: Sequence[bytes]) -> Head:
        """Append stored records exactly as they are (an export's bytes): same positions,
        links and hashes; all or nothing. Blocks the caller."""
        checked = [bytes(record) for record in records]
        if not checked:
            return self.head()
        decoded = [decode_record(record) for record in checked]
        outcome: Head | Exception = self.run_in_writer(
            lambda txn: self.store.write_verbatim(txn, checked, decoded)
        )
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def redact(
        self, session_id: str, version: int | None, *, reason: str = "",
        redacted_by: str | None = None,
    ) -> list[Recorded]:
        """Remove the content of one version of a session (None: of every record that still
        has some) and append a Redacted event for each, in one transaction; returns those
        records. The chains keep verifying. Blocks the caller."""
        validate_session_id(session_id)
        outcome: list[Recorded] | Exception = self.run_in_writer(
            lambda txn: self.store.redact(txn, session_id, version, reason, redacted_by)
        )
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _submit(self, payloads: list[EncodedAppend]) -> list[list[Recorded]]:
        """Hand encoded appends to the writer as one all-or-nothing request; wait for it."""
        result: list[list[Recorded]] = self.store.submit(AtomicAppends(payloads), self.path)
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
        """Run `function(txn)` in the writer's transaction (maintenance, and tests that
        forge damage). Blocks the caller until it has run."""
        return self.store.submit(WriterJob(function=function), self.path)

    # -- leases (changed in the writer's transaction, so a fenced append sees them) -------

    def acquire_lease(
        self, session_id: str, owner: LeaseOwner, ttl: float, *,
        take_over: LeaseOwner | None = None,
    ) -> Lease | None:
        """Take the session's lease for `ttl` seconds, or None if a live owner holds it.
        Blocks the caller for one (group) commit."""
        validate_session_id(session_id)
        return self._change_lease(
            session_id,
            lambda current: acquired(current, session_id, owner, ttl, self.clock(), take_over),
        )

    def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend a lease for `ttl` seconds from now; None if it was taken over."""
        return self._change_lease(
            lease.session_id, lambda current: renewed(current, lease, ttl, self.clock())
        )

    def release_lease(self, lease: Lease) -> bool:
        """Let a lease go at once (its epoch stays); whether it was still ours."""
        return self._change_lease(lease.session_id,
                                  lambda current: released(current, lease)) is not None

    def _change_lease(
        self, session_id: str, decide: Callable[[Lease | None], Lease | None]
    ) -> Lease | None:
        """Read a session's lease record, decide, and write the new one in one writer
        transaction; returns the new record (None: unchanged)."""
        store = self.store
        key = layout.lease_key(session_id)

        def change(txn: Any) -> Lease | None:
            new = decide(store.lease_in(txn, session_id))
            if new is not None:
                txn.put(key, encode_lease(new), db=store.meta_db)
            return new

        result: Lease | None = self.run_in_writer(change)
        return result

    def lease(self, session_id: str) -> Lease | None:
        """The session's lease record as stored, or None."""
        validate_session_id(session_id)
        with self.store.shared.transaction() as txn:
            return self.store.lease_in(txn, session_id)

    def clock(self) -> float:
        """This host's wall clock, against which leases expire (all writers of an LMDB
        ledger share the host)."""
        return time.time()

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

    def read_session_raw(self, session_id: str, from_version: int = 1) -> list[StoredValue]:
        """One session's stored values (hash + record) with their positions, for audits: it
        follows the stream index alone, trusting no session index entry."""
        validate_session_id(session_id)
        store = self.store
        start = layout.stream_key(session_id, max(from_version, 1))
        prefix = layout.stream_prefix(session_id)
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
        return [(layout.key_position(key), value) for key, value in found]

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
        if cursor.set_key(layout.stream_key(session_id, from_version)):
            positions = list(islice(cursor.iternext(keys=False, values=True), count))
        found = (txn.cursor(db=store.log_db).getmulti(positions)
                 if len(positions) == count else [])
        if len(found) != count or cursor.key() != layout.stream_key(session_id, last_version):
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
            if not cursor.set_range(layout.position_key(position)):
                return values, position
            if to_position is None:
                for value in cursor.iternext(keys=False, values=True):
                    values.append(value)
                    if len(values) >= READ_CHUNK:
                        break
            else:
                last_key = layout.position_key(to_position)
                for key, value in cursor:
                    if key > last_key:
                        return values, to_position + 1
                    values.append(value)
                    if len(values) >= READ_CHUNK:
                        break
            next_position = layout.key_position(cursor.key()) + 1 if values else position
        return values, next_position

    def read_raw(self, from_position: int = 1) -> Iterator[StoredValue]:
        """Every stored value as (position, stored hash + record bytes), for export."""
        store = self.store
        position = max(from_position, 1)
        while True:
            chunk: list[StoredValue] = []
            with store.shared.transaction() as txn:
                cursor = txn.cursor(db=store.log_db)
                if cursor.set_range(layout.position_key(position)):
                    for key, value in cursor:
                        chunk.append((layout.key_position(key), value))
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
            return store.head_in(txn)

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
                result.append(layout.decode_index_entry(value).info)
        return result

    def subscribe(self, from_position: int = 1, poll_interval: float = 0.2) -> Subscription:
        """Catch up from `from_position`, then follow live appends (of any process)."""
        return Subscription(self.read_all, from_position, self.store.appended, poll_interval)

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
        """Recompute both hash chains and the indexes of one snapshot; check a saved head."""
        return verify_log(self.store, saved_head, progress=progress)

    def rebuild_index(self) -> int:
        """Recompute the session index from the log in one write; returns the session count."""
        store = self.store

        def rebuild(txn: Any) -> int:
            entries: dict[str, IndexEntry] = {}
            for value in txn.cursor(db=store.log_db).iternext(keys=False, values=True):
                data = value[HASH_SIZE:]
                recorded = decode_record(data)
                entry = entries.get(recorded.session_id)
                info = entry.info if entry else SessionInfo(session_id=recorded.session_id)
                try:
                    info = evolve(info, recorded)
                except ProjectionError as error:
                    raise LedgerError(f"cannot rebuild the index: {error}") from None
                entries[recorded.session_id] = IndexEntry(info=info, last_hash=record_hash(data))
            txn.drop(store.sessions_db, delete=False)
            for session_id, entry in entries.items():
                txn.put(layout.session_key(session_id), layout.encode_index_entry(entry),
                        db=store.sessions_db)
            return len(entries)

        result: int = self.run_in_writer(rebuild)
        return result
