"""The sealer: places committed events in the global order and chains them, in batches.

Appends commit without any global lock. Most seal their own batch in their transaction when
the head they assumed holds (see `writer.py`); the sealer gives the rows of the others
positions afterwards. One seal is two round trips, each its own short transaction (schema 4):
1. in one statement, hence one snapshot, read the sealed head, the horizon
   `X = pg_snapshot_xmin(pg_current_snapshot())` (every transaction with an id below X has
   ended, so no row with `txid < X` can appear later) and the unsealed rows with `txid < X` in
   `(txid, seq)` order;
2. give them the next positions, the link to the previous record of the log and of their
   session, and their stored record and hash, exactly as LMDB would have written them;
3. store them with `chatledger.seal_store`, which locks the `seal` row (sealers of several
   nodes and imports take turns there; appenders never touch it) and writes only if the head
   is still the one read in 1 (else another sealer or an import moved it, and the seal is
   computed again), with one NOTIFY for the whole batch (a wake-up for other nodes'
   subscriptions).

Positions are handed out under the row lock, in commit order of the seals, so a reader that
checkpoints a position never misses a record.

The horizon makes the order a pure function of the committed rows: a seal lost in a crash
is redone identically (same positions, links and hashes), which is why seals
commit with `synchronous_commit = off` (an append's own commit is always synchronous).
Per-session order agrees with `txid` order because an append takes its sessions' advisory
locks before its transaction has an id (see `writer.py`). The sealer never waits on an
appender, and appenders never wait on it.

While the server is unreachable (a failover under way) the sealing thread tries again every
half second at most, warning once per outage; the promoted primary holds every committed
row, and seals the old primary had not made durable are redone identically.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import psycopg

from ...errors import LedgerError
from ...events.codec import decode_envelope
from ...events.model import Recorded
from ..hashing import GENESIS, Head
from .connection import RETRY_FIRST_PAUSE, RETRY_LONGEST_PAUSE, Pool, describe
from .records import seal_record, with_seal
from .schema import SEAL_CHANNEL

logger = logging.getLogger(__name__)

SealKey = tuple[str, int]
"""(session id, version)"""

# The head, the horizon and the rows come from one statement, hence one snapshot
# (pg_current_snapshot() is the statement's): every transaction below its xmin has ended and
# is visible or gone.
_UNSEALED = (
    "WITH horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS below)"
    " SELECT head.position, head.hash, horizon.below::text, e.txid::text, e.session_id,"
    "  e.version, e.recorded_at, e.schema_version, e.event, e.previous_hash"
    " FROM chatledger.seal head CROSS JOIN horizon LEFT JOIN LATERAL ("
    "  SELECT e.txid, e.seq, e.session_id, e.version, e.recorded_at, e.schema_version, e.event,"
    "   previous.hash AS previous_hash"
    "  FROM chatledger.events e LEFT JOIN chatledger.events previous"
    "   ON previous.session_id = e.session_id AND previous.version = e.version - 1"
    "  WHERE e.position IS NULL AND e.txid < horizon.below"
    "  ORDER BY e.txid, e.seq LIMIT %s) e ON true"
    " ORDER BY e.txid, e.seq"
)
# Seals commit asynchronously (see the module docstring); the seal row is their lock.
_STORE = (  # binary parameters: a third of the client CPU of text arrays
    "SELECT chatledger.seal_store(%s, %s, %s, %s::xid8, %b::text[], %b::int8[], %b::int8[],"
    " %b::bytea[], %b::bytea[], %s)"
)
_ANY_UNSEALED = "SELECT EXISTS (SELECT 1 FROM chatledger.events WHERE position IS NULL)"
_SEALED_RECORDS = (
    "SELECT e.session_id, e.version, e.record FROM chatledger.events e"
    " JOIN unnest(%s::text[], %s::int8[]) AS k(session_id, version)"
    "  ON e.session_id = k.session_id AND e.version = k.version"
    " WHERE e.record IS NOT NULL"
)


class SealResult(NamedTuple):
    """What one seal transaction did."""

    placed: dict[SealKey, tuple[int, bytes, bytes]]
    """(session, version) -> (position, previous session hash, previous log hash)"""
    sealed_below: int
    """Every transaction with a lower id is now sealed."""
    head: Head
    complete: bool
    """False when the batch limit cut the work short: seal again."""
    hashes: dict[SealKey, bytes]
    """(session, version) -> the hash of the record placed there"""


def seal_once(pool: Pool, limit: int) -> SealResult:
    """Run one seal (see the module docstring). Blocks the calling thread."""
    with pool.connection() as connection:
        connection.autocommit = True  # two single-statement transactions: two round trips
        try:
            return _seal(connection, limit)
        finally:
            if not connection.closed:
                connection.autocommit = False


def _seal(connection: psycopg.Connection[Any], limit: int) -> SealResult:
    rows = connection.execute(_UNSEALED, [limit], binary=True).fetchall()
    assert rows, "the seal row is missing: the schema was damaged"
    expected = position = int(rows[0][0])
    log_hash = bytes(rows[0][1])
    horizon = int(rows[0][2])
    read_head = Head(position, log_hash)
    rows = [row[3:] for row in rows if row[3] is not None]
    if not rows:
        return SealResult({}, horizon, read_head, True, {})
    complete = len(rows) < limit
    sealed_below = horizon if complete else int(rows[-1][0])
    last_in_batch: dict[str, tuple[int, bytes]] = {}
    placed: dict[SealKey, tuple[int, bytes, bytes]] = {}
    hashes: dict[SealKey, bytes] = {}
    columns: tuple[list[Any], ...] = ([], [], [], [], [])
    for _txid, session_id, version, recorded_at, schema_version, event, previous_hash in rows:
        if version == 1:
            session_hash = GENESIS
        elif previous_hash is not None:
            session_hash = bytes(previous_hash)
        else:
            earlier = last_in_batch.get(session_id)
            if earlier is None or earlier[0] != version - 1:
                raise LedgerError(
                    f"the sealer found version {version} of session {session_id!r} before "
                    f"version {version - 1}: appends are not taking their session locks"
                )
            session_hash = earlier[1]
        position += 1
        record, digest = seal_record(position, session_id, version, recorded_at,
                                     schema_version, session_hash, log_hash, bytes(event))
        placed[(session_id, version)] = (position, session_hash, log_hash)
        hashes[(session_id, version)] = digest
        last_in_batch[session_id] = (version, digest)
        log_hash = digest
        for column, value in zip(columns, (session_id, version, position, digest, record),
                                 strict=True):
            column.append(value)
    # Nobody else writes these rows (appenders only insert, other sealers and imports move
    # the head first, and then this store writes nothing).
    stored = connection.execute(_STORE, [expected, position, log_hash, str(sealed_below),
                                         *columns, SEAL_CHANNEL]).fetchone()
    if stored is None or not stored[0]:
        return SealResult({}, 0, read_head, False, {})  # the head moved: seal again
    return SealResult(placed, sealed_below, Head(position, log_hash), complete, hashes)


class Answer(Protocol):
    """Where a waiting append's records go once sealed (a Future would do)."""

    def done(self) -> bool:
        """Whether it is answered already."""
        ...

    def set_result(self, result: list[list[Recorded]]) -> None:
        """Answer with the records."""
        ...


class _Waiter(NamedTuple):
    txid: int
    deadline: float
    future: Answer
    lists: list[list[Recorded]]


class Sealer:
    """Seals in a background thread (when started) and completes appends waiting for their
    seal. `seal_now` seals from the calling thread."""

    def __init__(self, pool: Pool, *, interval: float, batch: int, wait_timeout: float,
                 on_sealed: Callable[[Head], None]) -> None:
        self._pool = pool
        self._interval = interval
        self._batch = batch
        self._wait_timeout = wait_timeout
        self._on_sealed = on_sealed
        self._lock = threading.Lock()
        self._waiters: list[_Waiter] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_placed: Callable[[Head, dict[SealKey, bytes]], None] | None = None
        """Told of every seal this sealer stores (the writer keeps the head it assumes)."""

    def start(self) -> None:
        """Start the background sealing thread."""
        self._thread = threading.Thread(target=self._run, name="chatledger-pg-sealer",
                                        daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Ask the thread to seal now (non-blocking)."""
        self._wake.set()

    def expect(self, txid: int, future: Answer, lists: list[list[Recorded]], *,
               wake: bool = True) -> None:
        """Complete `future` with `lists` as sealed, once transaction `txid` is sealed."""
        with self._lock:
            self._waiters.append(_Waiter(txid, time.monotonic() + self._wait_timeout, future,
                                         lists))
        if wake:
            self._wake.set()

    def seal_now(self) -> Head:
        """Seal everything below the horizon now; returns the sealed head. Blocks."""
        while True:
            result = seal_once(self._pool, self._batch)
            self._complete(result)
            if result.complete:
                return result.head

    def _run(self) -> None:
        """The sealing loop. Runs on the sealer thread."""
        backoff = self._interval
        failing_since: float | None = None
        while not self._stop.is_set():
            self._wake.wait(backoff)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if self._has_waiters() or self._anything_unsealed():
                    self.seal_now()
                # An older transaction still holds the horizon: look again soon.
                backoff = 0.002 if self._has_waiters() else self._interval
                if failing_since is not None:
                    logger.warning("chatledger sealer: sealing again after %.1f s",
                                   time.monotonic() - failing_since)
                    failing_since = None
            except (LedgerError, psycopg.Error) as error:
                # The server is away (a failover?): one warning per outage, then quietly
                # try again every RETRY_LONGEST_PAUSE at most, until it answers.
                if failing_since is None:
                    failing_since = time.monotonic()
                    logger.warning("chatledger sealer: %s (retrying)", describe(error))
                else:
                    logger.debug("chatledger sealer: %s (retrying)", describe(error))
                backoff = min(max(backoff * 2, RETRY_FIRST_PAUSE), RETRY_LONGEST_PAUSE)
            self._expire()

    def waiting(self) -> bool:
        """Whether appends are still waiting for their seal."""
        return self._has_waiters()

    def waiting_count(self) -> int:
        """How many appends wait for their seal."""
        with self._lock:
            return len(self._waiters)

    def _has_waiters(self) -> bool:
        with self._lock:
            return bool(self._waiters)

    def _anything_unsealed(self) -> bool:
        """Whether any row waits for its seal (a cheap look at the partial index)."""
        with self._pool.connection() as connection:
            row = connection.execute(_ANY_UNSEALED).fetchone()
            connection.rollback()
        return bool(row and row[0])

    def placed_inline(self, head: Head) -> None:
        """An append sealed its own records (in its transaction) up to `head`."""
        self._on_sealed(head)

    def _complete(self, result: SealResult) -> None:
        if result.placed:
            self._on_sealed(result.head)
            if self.on_placed is not None:
                self.on_placed(result.head, result.hashes)
        with self._lock:
            ready = [waiter for waiter in self._waiters if waiter.txid < result.sealed_below]
            if not ready:
                return
            self._waiters = [waiter for waiter in self._waiters
                             if waiter.txid >= result.sealed_below]
        missing = [(recorded.session_id, recorded.version)
                   for waiter in ready for records in waiter.lists for recorded in records
                   if (recorded.session_id, recorded.version) not in result.placed]
        placed = dict(result.placed)
        if missing:
            try:
                placed.update(self._placed_elsewhere(missing))
            except (LedgerError, psycopg.Error) as error:
                # The server went away (a failover?): those waiters ask again after the
                # next seal, until their deadline, rather than answer without positions.
                logger.info("chatledger sealer: %s (asking again)", describe(error))
                unanswered = [waiter for waiter in ready if not self._all_placed(waiter, placed)]
                with self._lock:
                    self._waiters.extend(unanswered)
                ready = [waiter for waiter in ready if waiter not in unanswered]
        for waiter in ready:
            self._resolve(waiter, placed)

    @staticmethod
    def _all_placed(waiter: _Waiter, placed: dict[SealKey, tuple[int, bytes, bytes]]) -> bool:
        return all((recorded.session_id, recorded.version) in placed
                   for records in waiter.lists for recorded in records)

    def _placed_elsewhere(self, keys: list[SealKey]) -> dict[SealKey, tuple[int, bytes, bytes]]:
        """Seals of these rows made by another node's sealer (or an earlier batch)."""
        with self._pool.connection() as connection:
            rows = connection.execute(_SEALED_RECORDS, [[key[0] for key in keys],
                                                        [key[1] for key in keys]]).fetchall()
            connection.rollback()
        placed: dict[SealKey, tuple[int, bytes, bytes]] = {}
        for session_id, version, record in rows:
            envelope = decode_envelope(bytes(record))
            placed[(session_id, version)] = (envelope.position, envelope.prev_session_hash,
                                             envelope.prev_log_hash)
        return placed

    @staticmethod
    def _resolve(waiter: _Waiter, placed: dict[SealKey, tuple[int, bytes, bytes]]) -> None:
        lists = []
        for records in waiter.lists:
            sealed = []
            for recorded in records:
                seal = placed.get((recorded.session_id, recorded.version))
                sealed.append(with_seal(recorded, *seal) if seal is not None else recorded)
            lists.append(sealed)
        if not waiter.future.done():
            waiter.future.set_result(lists)

    def _expire(self) -> None:
        """Answer appends whose seal is overdue with their unsealed records (position 0)."""
        now = time.monotonic()
        with self._lock:
            overdue = [waiter for waiter in self._waiters if waiter.deadline <= now]
            self._waiters = [waiter for waiter in self._waiters if waiter.deadline > now]
        if overdue:
            logger.warning("chatledger sealer: %d appends answered before their seal "
                           "(is a long transaction holding back the horizon?)", len(overdue))
        for waiter in overdue:
            self._resolve(waiter, {})

    def close(self) -> None:
        """Stop the thread; appends still waiting get their unsealed records."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            waiting, self._waiters = self._waiters, []
        for waiter in waiting:
            self._resolve(waiter, {})
