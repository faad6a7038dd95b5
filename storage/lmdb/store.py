"""The per-process state of one LMDB ledger: its environment, its writer, and the write path.

`LedgerStore` is shared by every `EventLog` handle on one directory in a process. It owns the
group-commit writer and applies batches of appends inside the writer's transaction: checks
the expected versions, encodes the envelopes, and writes the log, the stream index, the
session index and the head together, so the indexes can never disagree with the log unless
someone edits the file. It knows nothing of actors or agents.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from itertools import islice
from typing import Any

import msgspec

from ...errors import ConcurrencyError, LedgerError, StaleLeaseError, UnknownSessionError
from ...events.codec import SCHEMA_VERSION
from ...events.model import Recorded
from ...events.projections import SessionInfo, evolve
from ..hashing import GENESIS, Head
from ..leases import (
    Lease,
    LeaseRequest,
    decode_lease,
    encode_lease,
    fences,
    granted_as_expected,
    released,
)
from ..records import (
    EncodedAppend,
    IndexEntry,
    SessionAppend,
    StoredValue,
    encode_append,
    stored_record,
)
from ..redaction import RedactionRefusedError, plan_redaction
from ..verbatim import plan_verbatim
from . import layout
from .environment import SharedEnvironment, open_environment, release_environment
from .writer import GroupCommitWriter


class AtomicAppends(msgspec.Struct):
    """Appends to several sessions that commit together or not at all; with `take_lease`,
    only once that lease is granted as it asks, in the same transaction (the result is then
    the lease granted and the records, or None: nothing granted, nothing written)."""

    appends: list[EncodedAppend]
    take_lease: LeaseRequest | None = None


class WriterJob(msgspec.Struct):
    """A maintenance function run in the writer's transaction (rebuild, test forgeries)."""

    function: Callable[[Any], Any]


class LedgerStore:
    """The per-process state of one ledger: its environment, writer and live-append signal."""

    def __init__(self, shared: SharedEnvironment) -> None:
        self.shared = shared
        self.log_db = shared.databases[layout.LOG_DB]
        self.streams_db = shared.databases[layout.STREAMS_DB]
        self.sessions_db = shared.databases[layout.SESSIONS_DB]
        self.meta_db = shared.databases[layout.META_DB]
        self.appended = threading.Condition()
        self._stored_format = layout.FORMAT_VERSION
        self._format_written = False
        self.writer: GroupCommitWriter | None = None
        if not shared.readonly:
            self._initialise_format()
            self.writer = GroupCommitWriter(shared, self._apply_batch, self._notify)
        else:
            self._check_format()

    def _notify(self) -> None:
        if self._format_written:
            self._stored_format = layout.FORMAT_VERSION
        with self.appended:
            self.appended.notify_all()

    def _initialise_format(self) -> None:
        with self.shared.transaction(write=True) as txn:
            marker = txn.get(layout.META_FORMAT, db=self.meta_db)
            if marker is None:
                if txn.stat(self.log_db)["entries"]:
                    raise LedgerError(f"{self.shared.path} holds a log without a format marker")
                txn.put(layout.META_FORMAT, layout.encode_format(), db=self.meta_db)
            else:
                self._stored_format = self._check_marker(marker)

    def mark_format(self, txn: Any) -> None:
        """Mark a format-1 ledger as format 2 before this release writes records into it.
        Write transaction only."""
        if self._stored_format < layout.FORMAT_VERSION:
            txn.put(layout.META_FORMAT, layout.encode_format(), db=self.meta_db)
            self._format_written = True  # kept once the transaction commits (`_notify`)

    def _check_format(self) -> None:
        with self.shared.transaction() as txn:
            marker = txn.get(layout.META_FORMAT, db=self.meta_db)
        if marker is None:
            raise LedgerError(f"{self.shared.path} is not a chatledger ledger")
        self._check_marker(marker)

    def _check_marker(self, marker: bytes) -> int:
        try:
            fields = layout.decode_format(marker)
        except msgspec.DecodeError:
            raise LedgerError(f"{self.shared.path} is not a chatledger ledger") from None
        if fields.get("marker") != layout.FORMAT_MARKER:
            raise LedgerError(f"{self.shared.path} is not a chatledger ledger")
        if int(fields.get("version", 0)) > layout.FORMAT_VERSION:
            raise LedgerError(
                f"{self.shared.path} was written by a newer chatledger (storage format "
                f"{fields.get('version')}, this release reads {layout.FORMAT_VERSION}): "
                "upgrade chatledger"
            )
        return int(fields.get("version", 0))

    def index_entry_in(self, txn: Any, session_id: str) -> IndexEntry | None:
        """A session's index entry as `txn` sees it (None if the session is unknown)."""
        data = txn.get(layout.session_key(session_id), db=self.sessions_db)
        return layout.decode_index_entry(data) if data is not None else None

    def lease_in(self, txn: Any, session_id: str) -> Lease | None:
        """A session's lease record as `txn` sees it (None if it never had one)."""
        data = txn.get(layout.lease_key(session_id), db=self.meta_db)
        return decode_lease(data) if data is not None else None

    def head_in(self, txn: Any) -> Head:
        """The stored head as `txn` sees it."""
        return layout.decode_head(txn.get(layout.META_HEAD, db=self.meta_db))

    def submit(self, payload: AtomicAppends | WriterJob, path: str) -> Any:
        """Hand a request to the writer and wait for its result. Blocks the caller. Appends
        are committed on the caller's thread when the writer is idle; a job always runs on
        the writer's thread (tests hold the writer inside one)."""
        if self.writer is None:
            raise LedgerError(f"the ledger at {path} is open read-only")
        return self.writer.submit(payload, here_if_idle=not isinstance(payload, WriterJob))

    # -- the writer thread ------------------------------------------------------------------

    def _next_position(self, cursor: Any) -> int:
        return layout.key_position(cursor.key()) + 1 if cursor.last() else 1

    def _apply_batch(self, txn: Any, batch: list[Any]) -> list[Any]:
        """Apply a batch of appends and jobs in the writer's transaction. Write transaction only."""
        cursor = txn.cursor(db=self.log_db)
        next_position = self._next_position(cursor)
        head = self.head_in(txn)
        log_hash = head.hash
        touched: dict[str, IndexEntry | None] = {}
        results: list[Any] = []
        for request in batch:
            payload = request.payload
            if isinstance(payload, WriterJob):
                # Earlier appends of this batch must be in place before a job reads the file.
                self._flush(txn, touched, head, next_position, log_hash)
                results.append(payload.function(txn))
                # A job may rewrite anything: start the batch state afresh after it.
                next_position = self._next_position(cursor)
                head = self.head_in(txn)
                log_hash = head.hash
                touched.clear()
                continue
            self.mark_format(txn)
            result, next_position, log_hash = self._apply_appends(
                txn, payload.appends, touched, next_position, log_hash, payload.take_lease
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
        """Write the batch's index entries and head so far. Write transaction only."""
        for session_id, entry in touched.items():
            if entry is not None:
                txn.put(layout.session_key(session_id), layout.encode_index_entry(entry),
                        db=self.sessions_db)
        if next_position - 1 != head.position:
            txn.put(layout.META_HEAD, layout.encode_head(next_position - 1, log_hash),
                    db=self.meta_db)

    def _index_entry(
        self, txn: Any, session_id: str, touched: dict[str, IndexEntry | None]
    ) -> IndexEntry | None:
        if session_id in touched:
            return touched[session_id]
        return self.index_entry_in(txn, session_id)

    def _apply_appends(
        self,
        txn: Any,
        appends: list[EncodedAppend],
        touched: dict[str, IndexEntry | None],
        next_position: int,
        log_hash: bytes,
        take_lease: LeaseRequest | None = None,
    ) -> tuple[Any, int, bytes]:
        """Check every lease and expected version, then write all the appends (or none,
        returning the conflict); returns the result, the next free position and the log
        hash. With `take_lease`, that lease is decided first: not granted as it asks, the
        result is None and nothing is written; granted, it is written with the appends and
        the result is (the lease, the records)."""
        granted: Lease | None = None
        if take_lease is not None:
            session_id = take_lease.lease.session_id
            granted = granted_as_expected(self.lease_in(txn, session_id), take_lease,
                                          time.time())
            if granted is None:
                return None, next_position, log_hash
        entries: dict[str, IndexEntry | None] = {}
        for append in appends:
            if append.lease is not None and not fences(
                self.lease_in(txn, append.session_id), append.lease
            ):
                return (StaleLeaseError(append.session_id, append.lease.epoch),
                        next_position, log_hash)
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
            if append.release_lease and append.lease is not None:
                freed = released(self.lease_in(txn, append.session_id), append.lease)
                if freed is not None:
                    txn.put(layout.lease_key(append.session_id), encode_lease(freed),
                            db=self.meta_db)
        if granted is not None:
            txn.put(layout.lease_key(granted.session_id), encode_lease(granted),
                    db=self.meta_db)
            return (granted, written), next_position, log_hash
        return written, next_position, log_hash

    def _write_append(
        self,
        txn: Any,
        payload: EncodedAppend,
        entry: IndexEntry | None,
        touched: dict[str, IndexEntry | None],
        next_position: int,
        log_hash: bytes,
    ) -> tuple[list[Recorded], int, bytes]:
        """Write one session's events after its index `entry` (version already checked);
        returns the records, the next free position and the new log hash. Write transaction only."""
        session_id = payload.session_id
        version = entry.info.version if entry is not None else 0
        info = entry.info if entry is not None else SessionInfo(session_id=session_id)
        session_hash = entry.last_hash if entry is not None else GENESIS
        now = datetime.now(timezone.utc)
        times = payload.recorded_at or [now] * len(payload.events)
        position_key, stream_key = layout.position_key, layout.stream_key
        recorded_list: list[Recorded] = []
        seals = payload.seals or [None] * len(payload.events)
        for event, encoded_event, seal, recorded_at in zip(
            payload.events, payload.encoded, seals, times, strict=True
        ):
            version += 1
            record, digest = stored_record(next_position, session_id, version, recorded_at,
                                           session_hash, log_hash, encoded_event, seal,
                                           SCHEMA_VERSION)
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

    def write_verbatim(
        self, txn: Any, records: list[bytes], decoded: list[Recorded]
    ) -> Head | Exception:
        """Write stored records as they are if they continue the log and their sessions;
        returns the new head, or the error (nothing written). Write transaction only: an error is
        returned, not raised, so the other requests of the batch still commit."""
        plan = plan_verbatim(
            self.head_in(txn), records, decoded, lambda sid: self.index_entry_in(txn, sid)
        )
        if isinstance(plan, Exception):
            return plan
        self.mark_format(txn)
        for recorded, value in plan.values:
            txn.put(layout.position_key(recorded.position), value, db=self.log_db, append=True)
            txn.put(layout.stream_key(recorded.session_id, recorded.version),
                    layout.position_key(recorded.position), db=self.streams_db)
        for session_id, entry in plan.entries.items():
            txn.put(layout.session_key(session_id), layout.encode_index_entry(entry),
                    db=self.sessions_db)
        txn.put(layout.META_HEAD, layout.encode_head(plan.head.position, plan.head.hash),
                db=self.meta_db)
        return plan.head

    def redact(
        self, txn: Any, session_id: str, version: int | None, reason: str,
        redacted_by: str | None,
    ) -> list[Recorded] | Exception:
        """Remove the content of a version of a session (None: of all of it) and append its
        Redacted events, in the writer's transaction; returns the Redacted records, or the
        error (nothing written). Write transaction only: an error is returned, not raised, so the
        other requests of the batch still commit."""
        entry = self.index_entry_in(txn, session_id)
        if entry is None:
            return UnknownSessionError(f"Session not found: {session_id}")
        try:
            values = self._session_values_in(txn, session_id, entry.info.version)
            plan = plan_redaction(session_id, values, version, reason=reason,
                                  redacted_by=redacted_by)
            payload = encode_append(SessionAppend(session_id, plan.events, entry.info.version))
        except (RedactionRefusedError, LedgerError, TypeError) as error:
            return error
        for position, value in plan.rewrites:
            txn.put(layout.position_key(position), value, db=self.log_db)
        refolded = IndexEntry(info=plan.info, last_hash=entry.last_hash)
        if not payload.events:
            txn.put(layout.session_key(session_id), layout.encode_index_entry(refolded),
                    db=self.sessions_db)
            return []
        head = self.head_in(txn)
        touched: dict[str, IndexEntry | None] = {}
        written, next_position, log_hash = self._write_append(
            txn, payload, refolded, touched, head.position + 1, head.hash
        )
        self._flush(txn, touched, head, next_position, log_hash)
        return written

    def _session_values_in(self, txn: Any, session_id: str, count: int) -> list[StoredValue]:
        """Every stored value of a session (versions 1..count) as `txn` sees them."""
        cursor = txn.cursor(db=self.streams_db)
        positions: list[bytes] = []
        if count and cursor.set_key(layout.stream_key(session_id, 1)):
            positions = list(islice(cursor.iternext(keys=False, values=True), count))
        found = txn.cursor(db=self.log_db).getmulti(positions) if positions else []
        if len(found) != count:
            raise LedgerError(f"the stream index of {session_id!r} does not match its index "
                              "entry: run `chatledger verify`")
        return [(layout.key_position(key), bytes(value)) for key, value in found]

    def close(self) -> None:
        """Stop the writer (after what is queued) and close the environment if last."""
        if self.writer is not None:
            self.writer.close()
        release_environment(self.shared)


_stores_lock = threading.Lock()


def acquire_store(
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


def release_store(store: LedgerStore) -> None:
    """Drop one handle's reference; the last one stops the writer and closes the file."""
    with _stores_lock:
        if store.shared.references > 1:
            release_environment(store.shared)
            return
        store.shared.owner = None
    store.close()
