"""Verify an LMDB ledger from one consistent snapshot, in one or two processes.

The sequential check reads everything in one read transaction (`LmdbSnapshot`) and hands it
to the store-agnostic `verify_snapshot`, so a writer in another process cannot make a healthy
ledger look damaged. A large log is checked by two processes, session by session: this
thread takes the first half of the session ids and a helper process (`verify_helper`) the
second, each walking its range through `checks.check_record`; only a clean result whose
totals add up within this thread's snapshot is taken, anything else (damage, a helper that
failed, or a writer that moved the log on between the two snapshots) sends the check back to
the sequential walk, which reports every problem in log order.

A verify holds its read transaction for as long as it runs: pages freed meanwhile are kept
until it ends, and a map growth in this process waits for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from itertools import chain
from typing import Any

import msgspec

from ..checks import SessionChain, check_record
from ..hashing import GENESIS, HASH_SIZE, Head
from ..records import IndexEntry, StoredValue
from ..verification import VerifyReport, verify_snapshot
from . import layout
from .store import LedgerStore

PARALLEL_MIN_RECORDS = 100_000
"""Below this many records a helper process costs more than it saves."""
HELPER_TIMEOUT = 60.0
"""Seconds the helper may take beyond 50 us per record before it is given up on."""


class RangeReport(msgspec.Struct, kw_only=True):
    """Whether a range of sessions is intact, how many records and sessions it holds, and
    how many of them are at or before the position it was asked to count up to."""

    ok: bool = True
    records: int = 0
    sessions: int = 0
    records_until: int = 0
    sessions_until: int = 0
    redacted: int = 0
    redacted_until: int = 0


_range_decoder = msgspec.msgpack.Decoder(RangeReport)
_HELPER_MAIN = (
    f"import sys; from {__package__}.verify_helper import main; sys.exit(main(sys.argv[1:]))"
)


class LmdbSnapshot:
    """The log and indexes as one read transaction sees them (see `LedgerSnapshot`)."""

    def __init__(self, store: LedgerStore, txn: Any) -> None:
        self._store = store
        self._txn = txn

    def records(self) -> Iterator[StoredValue]:
        """Every stored value with its position, in log order."""
        from_bytes = int.from_bytes  # inlined `layout.key_position`: once per record
        for key, value in self._txn.cursor(db=self._store.log_db):
            yield from_bytes(key, "big"), value

    def head(self) -> Head:
        """The head as stored."""
        return self._store.head_in(self._txn)

    def stream_index(self) -> Iterator[tuple[str | None, int, int]]:
        """Every (session id, version, position) of the stream index, in key order."""
        current: bytes | None = None
        session_id: str | None = None
        for key, value in self._txn.cursor(db=self._store.streams_db):
            session_bytes = layout.stream_key_session(key)
            if session_bytes != current:  # keys come sorted: decode each id once
                current = session_bytes
                try:
                    session_id = session_bytes.decode()
                except UnicodeDecodeError:
                    session_id = None
            yield session_id, layout.stream_key_version(key), layout.key_position(value)

    def stream_index_matches(self, positions: Mapping[str, list[int]]) -> bool:
        """Whether the stream index is exactly `positions`: its keys and its values each
        compared as one string of bytes (and their lengths as one list) with the index
        those positions make, rather than decoded one by one."""
        try:
            sessions = sorted((layout.stream_prefix(session_id), session_positions)
                              for session_id, session_positions in positions.items())
        except UnicodeEncodeError:
            return False
        total = sum(len(session_positions) for _, session_positions in sessions)
        txn, streams_db = self._txn, self._store.streams_db
        if int(txn.stat(streams_db)["entries"]) != total:
            return False
        lengths, keys_joined = layout.joined_stream_keys(
            [(prefix, len(session_positions)) for prefix, session_positions in sessions])
        keys = list(txn.cursor(db=streams_db).iternext(keys=True, values=False))
        if list(map(len, keys)) != lengths or b"".join(keys) != keys_joined:
            return False
        values = list(txn.cursor(db=streams_db).iternext(keys=False, values=True))
        return list(map(len, values)) == [layout.POSITION_BYTES] * total and b"".join(
            values) == layout.position_keys(
            chain.from_iterable(session_positions for _, session_positions in sessions), total)

    def index_entries(self) -> dict[str, IndexEntry]:
        """The whole session index as stored."""
        return {
            key.decode(): layout.decode_index_entry(value)
            for key, value in self._txn.cursor(db=self._store.sessions_db)
        }

    def index_matches(self, entries: Mapping[str, IndexEntry]) -> bool:
        """Whether the session index holds exactly `entries`, encoded as a writer stores
        them (an entry stored in other bytes sends the caller to `index_entries`)."""
        try:
            expected = sorted((layout.session_key(session_id), layout.encode_index_entry(entry))
                              for session_id, entry in entries.items())
        except UnicodeEncodeError:
            return False
        return list(self._txn.cursor(db=self._store.sessions_db)) == expected


def verify_log(
    store: LedgerStore,
    saved_head: Head | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    parallel: bool | None = None,
) -> VerifyReport:
    """Check the whole ledger; see the module docstring. Blocks the calling thread.

    `parallel` defaults to true for logs of PARALLEL_MIN_RECORDS records or more on a
    machine with several cores; the verdict and the problems listed never depend on it.
    """
    if parallel is None:
        with store.shared.transaction() as txn:
            records = int(txn.stat(store.log_db)["entries"])
        parallel = (os.cpu_count() or 1) > 1 and records >= PARALLEL_MIN_RECORDS
    if parallel:
        advanced = [0]

        def counted(records: int) -> None:
            advanced[0] += records
            if progress is not None:
                progress(records)

        report = _verify_with_helper(store, saved_head, counted)
        if report is not None:
            return report
        if advanced[0]:
            progress = None  # the progress shown already covers the log
    with store.shared.transaction() as txn:
        return verify_snapshot(LmdbSnapshot(store, txn), saved_head, progress)


class _RangeBroken(Exception):
    """Something in the range is wrong; the sequential check will say what."""


def check_sessions(
    store: LedgerStore,
    txn: Any,
    start: bytes,
    stop: bytes | None,
    progress: Callable[[int], None] | None = None,
    until: int | None = None,
) -> RangeReport:
    """Check, as `txn` sees them, every session whose id (UTF-8 bytes) is >= `start` and
    < `stop` (None: no upper bound): each of its records through `check_record` in version
    order, the stream index keys that lead to them, and its session index entry. Records
    at positions up to `until` (None: all), and the sessions holding them, are also counted
    apart, for a caller whose snapshot ends there."""
    report = RangeReport()
    until_position = until if until is not None else 1 << 63
    session_counted_until = False
    get = txn.get
    log_db, sessions_db = store.log_db, store.sessions_db
    chains: dict[str, SessionChain] = {}
    session_bytes: bytes | None = None
    session_id = ""
    last_position = -1
    unreported = 0

    def finish_session() -> None:
        stored = get(session_bytes, db=sessions_db)
        chain = chains.get(session_id)
        if stored is None or chain is None:
            raise _RangeBroken
        expected = IndexEntry(info=chain.info, last_hash=chain.last_hash)
        if stored != layout.encode_index_entry(expected) and (
            layout.decode_index_entry(stored) != expected
        ):
            raise _RangeBroken
        if chain.redacted:
            if chain.unrecorded_redactions():
                raise _RangeBroken
            report.redacted += len(chain.redacted)
            report.redacted_until += sum(1 for version in chain.redacted
                                         if chain.positions[version - 1] <= until_position)
        report.sessions += 1
        if session_counted_until:
            report.sessions_until += 1

    try:
        cursor = txn.cursor(db=store.streams_db)
        if not (cursor.set_range(start) if start else cursor.first()):
            return report
        from_bytes = int.from_bytes  # inlined `layout.key_position`: once per record
        for key, position_key in cursor:
            if stop is not None and key >= stop:
                break
            parts = layout.split_stream_key(key)
            if parts is None:
                raise _RangeBroken
            key_session, version = parts
            if key_session != session_bytes:
                if session_bytes is not None:
                    finish_session()
                session_bytes = key_session
                session_id = session_bytes.decode()
                chains = {}
                last_position = -1
                session_counted_until = False
            value = get(position_key, db=log_db)  # the stream index's values are log keys
            if value is None:
                raise _RangeBroken
            position = from_bytes(position_key, "big")
            if position == last_position + 1:
                previous_log_hash = chains[session_id].last_hash  # this session's previous
            elif position == 1:
                previous_log_hash = GENESIS
            else:
                previous = get(layout.position_key(position - 1), db=log_db)
                if previous is None:
                    raise _RangeBroken
                previous_log_hash = previous[:HASH_SIZE]
            _, recorded, problems = check_record(position, value, chains, previous_log_hash)
            if (
                problems
                or recorded is None
                or recorded.session_id != session_id
                or recorded.version != version
            ):
                raise _RangeBroken
            last_position = position
            report.records += 1
            if position <= until_position:
                report.records_until += 1
                session_counted_until = True
            unreported += 1
            if progress is not None and unreported >= 4096:
                progress(unreported)
                unreported = 0
        if session_bytes is not None:
            finish_session()
    except (_RangeBroken, UnicodeDecodeError):
        report.ok = False
        return report
    if progress is not None and unreported:
        progress(unreported)
    return report


def _start_helper(path: str, start: bytes, until: int) -> subprocess.Popen[bytes] | None:
    """Start `verify_helper` on the sessions from `start` on, counting records up to
    position `until` apart; None if it cannot start."""
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _HELPER_MAIN, path, start.hex(), str(until)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None


def _helper_report(helper: subprocess.Popen[bytes], records: int) -> RangeReport | None:
    """Wait for the helper's report (None if it failed or took far too long)."""
    try:
        output, _ = helper.communicate(timeout=HELPER_TIMEOUT + records / 20_000)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.communicate()
        return None
    if helper.returncode != 0:
        return None
    try:
        return _range_decoder.decode(output)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _middle_session(store: LedgerStore, txn: Any) -> bytes | None:
    """The id (bytes) of the session in the middle of the session index, if it has two."""
    count = int(txn.stat(store.sessions_db)["entries"])
    if count < 2:
        return None
    cursor = txn.cursor(db=store.sessions_db)
    for index, key in enumerate(cursor.iternext(keys=True, values=False)):
        if index == count // 2:
            return bytes(key)
    return None


def _stored_hash(store: LedgerStore, txn: Any, position: int) -> bytes | None:
    """The hash stored with the record at `position` (GENESIS at 0, None if missing)."""
    if position == 0:
        return GENESIS
    value = txn.get(layout.position_key(position), db=store.log_db)
    return None if value is None else bytes(value[:HASH_SIZE])


def _verify_with_helper(
    store: LedgerStore,
    saved_head: Head | None,
    progress: Callable[[int], None] | None,
) -> VerifyReport | None:
    """The two-process check: a clean report, or None when the sequential check must decide.

    Both halves must be intact, and the totals must add up in this thread's snapshot: every
    record of the log reached once through the stream index, every session indexed once,
    positions 1..N without a gap, and the stored and saved heads. The helper's snapshot is
    later than this thread's when another process writes meanwhile: it checks everything it
    sees, and counts apart what it holds up to this snapshot's head, which is what adds up
    (records are never rewritten, so those are the same records).
    """
    with store.shared.transaction() as txn:
        head = store.head_in(txn)
        middle = _middle_session(store, txn)
        helper = (_start_helper(os.fspath(store.shared.path), middle, head.position)
                  if middle else None)
        if middle is not None and helper is None:
            return None
        try:
            mine = check_sessions(store, txn, b"", middle, progress)
            theirs = RangeReport()
            if helper is not None:
                helper_report = _helper_report(helper, mine.records * 2)
                if helper_report is None:
                    return None
                theirs = helper_report
        finally:
            if helper is not None and helper.poll() is None:  # interrupted: stop the helper
                helper.kill()
                helper.communicate()
        if not (mine.ok and theirs.ok):
            return None
        records = mine.records + theirs.records_until
        sessions = mine.sessions + theirs.sessions_until
        log_count = int(txn.stat(store.log_db)["entries"])
        sessions_count = int(txn.stat(store.sessions_db)["entries"])
        cursor = txn.cursor(db=store.log_db)
        last_key = bytes(cursor.key()) if cursor.last() else bytes(layout.POSITION_BYTES)
        if (
            records != log_count
            or sessions != sessions_count
            or len(last_key) != layout.POSITION_BYTES
            or layout.key_position(last_key) != records
            or head.position != records
            or _stored_hash(store, txn, records) != head.hash
        ):
            return None
        if saved_head is not None and saved_head.position > 0 and (
            saved_head.position > records
            or _stored_hash(store, txn, saved_head.position) != saved_head.hash
        ):
            return None
    if progress is not None and theirs.records_until:
        progress(theirs.records_until)
    return VerifyReport(records_checked=records, sessions_checked=sessions, head=head,
                        records_redacted=mine.redacted + theirs.redacted_until)
