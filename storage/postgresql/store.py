"""PostgresStore: the event store port on PostgreSQL, for several backend nodes sharing one
ledger (see `schema.py` for the tables, `writer.py` for appends, `sealer.py` for the global
order and its hash chain, `verify.py` for the checks).

Records and hashes are LMDB's: a sealed record is the same MessagePack envelope with the same
two links, so verify and exports agree across stores. A record is sealed (given its position
and links) by its own append's transaction when this node knows the head, else by the sealer
within its lag; `append` waits for that by default, so it answers with complete records. `read_session`, `latest` and `info` also see records of other nodes that
are committed but not sealed yet, at position 0; `read_all`, `head` and subscriptions see only
sealed records, in the global order. This module must not hold a connection across a
caller's code.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import psycopg

from ...errors import LedgerClosedError, LedgerError, LedgerMissingError, UnknownSessionError
from ...events.codec import decode_record
from ...events.model import Event, Recorded, UnknownEvent
from ...events.projections import ProjectionError, SessionInfo, evolve
from .. import IndexEntry, Subscription
from ..hashing import GENESIS, HASH_SIZE, Head
from ..ids import validate_session_id
from ..leases import Lease, LeaseOwner
from ..records import EncodedAppend, SessionAppend, distinct_sessions, encode_append
from . import leases, redaction
from .batching import BatchPolicy
from .connection import ConnectionLostError, Pool, connect, describe, redact, retrying
from .listener import SealListener
from .pipeline import StatementPipeline
from .records import decode_info, encode_info, row_record
from .schema import SCHEMA_VERSION, migrate, stored_version
from .sealer import Sealer
from .verbatim import UnsealedSessionError, write_verbatim
from .verify import PostgresVerifyReport, verify_snapshot
from .writer import APPEND_BATCH, APPEND_BATCH_NAME, AppendOutcomeUnknownError, AppendWriter

READ_CHUNK = 1024

T = TypeVar("T")

# A sealed row's record holds everything: its other columns are only sent (and turned into
# Python objects) for a row the sealer has not placed yet.
_SESSION_ROWS = (
    "SELECT CASE WHEN record IS NULL THEN session_id END,"
    " CASE WHEN record IS NULL THEN version END, CASE WHEN record IS NULL THEN recorded_at END,"
    " CASE WHEN record IS NULL THEN schema_version END, event, record"
    " FROM chatledger.events WHERE session_id = %s AND version >= %s ORDER BY version"
)
_LATEST = (
    "WITH s AS (SELECT version, info FROM chatledger.sessions WHERE session_id = %(id)s)"
    " SELECT s.version, s.info, e.session_id, e.version, e.recorded_at, e.schema_version,"
    "  e.event, e.record, e.position"
    " FROM s LEFT JOIN chatledger.events e ON e.session_id = %(id)s"
    "  AND e.version > s.version - %(count)s AND e.version <= s.version"
    " ORDER BY e.version"
)
_INFO = (
    "SELECT s.info, e.position, e.hash FROM chatledger.sessions s LEFT JOIN chatledger.events e"
    " ON e.session_id = s.session_id AND e.version = s.version WHERE s.session_id = %s"
)
# An entry's own position when its batch was sealed inline (schema 7), else a look-up: COALESCE
# runs the subquery only for entries without one. JIT off: the planner costs that subquery for
# every row, and compiling the plan took longer than the listing.
_ALL_INFO = (
    "SELECT s.info, coalesce(s.position, (SELECT e.position FROM chatledger.events e"
    " WHERE e.session_id = s.session_id AND e.version = s.version))"
    " FROM chatledger.sessions s"
)
_RAW_FROM = (
    "SELECT position, hash, record FROM chatledger.events"
    " WHERE position >= %s AND position <= %s ORDER BY position LIMIT %s"
)
_SESSION_RAW = (
    "SELECT position, hash, record FROM chatledger.events"
    " WHERE session_id = %s AND version >= %s AND position IS NOT NULL ORDER BY version"
)
_HEAD = "SELECT position, hash FROM chatledger.seal"
_SIZE = (
    "SELECT sum(pg_total_relation_size(c.oid))::int8 FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'chatledger' AND c.relkind = 'r'"
)
_MAX_POSITION = 2**62


class PostgresStore:
    """An append-only, hash-chained event store in a PostgreSQL database (see the module
    docstring). Thread-safe; open one per process and node."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        pool_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        wait_for_seal: bool = True,
        seal: bool = True,
        seal_interval: float = 0.25,
        seal_batch: int = 5000,
        seal_wait_timeout: float = 10.0,
        seal_lag_limit: float = 30.0,
        max_batch: int = 1024,
        writers: int = 1,
        pipeline_depth: int = 2,
        batching: str = "adaptive",
        append_timeout: float = 60.0,
        reconnect_timeout: float = 10.0,
        idle_in_transaction_timeout: float = 30.0,
        create: bool = True,
        readonly: bool = False,
    ) -> None:
        policy = BatchPolicy(batching)  # a bad mode is refused before anything is opened
        self.url = url
        self._connect_timeout = connect_timeout
        self._reconnect_timeout = reconnect_timeout
        self._append_timeout = append_timeout
        self._seal_lag_limit = seal_lag_limit
        self._readonly = readonly
        self._closed = False
        self._sealed = threading.Condition()
        first = connect(url, connect_timeout=connect_timeout,
                        idle_in_transaction_timeout=idle_in_transaction_timeout)
        try:
            _prepare_schema(first, redact(url), create=create and not readonly,
                            readonly=readonly)
        except psycopg.Error as error:
            raise LedgerError(f"cannot set up the PostgreSQL ledger at {redact(url)}: "
                              f"{describe(error)}") from None
        finally:
            first.close()
        seal = self._seal = seal and not readonly
        self._pool = Pool(url, size=pool_size, timeout=pool_timeout,
                          connect_timeout=connect_timeout,
                          idle_in_transaction_timeout=idle_in_transaction_timeout)
        self.sealer = Sealer(self._pool, interval=seal_interval, batch=seal_batch,
                             wait_timeout=seal_wait_timeout, on_sealed=self._on_sealed)
        if seal:
            self.sealer.start()
        pipeline = StatementPipeline(
            lambda: connect(url, connect_timeout=connect_timeout, autocommit=True,
                            idle_in_transaction_timeout=idle_in_transaction_timeout),
            APPEND_BATCH_NAME, APPEND_BATCH, depth=pipeline_depth)
        self.writer = AppendWriter(self._pool, pipeline, self.sealer,
                                   wait_for_seal=wait_for_seal and seal, max_batch=max_batch,
                                   reconnect_timeout=reconnect_timeout, writers=writers,
                                   seal_inline=seal, policy=policy)
        if seal:
            self.writer.learn_seal(self.head(), {})
        self._listener: SealListener | None = None
        self._listener_lock = threading.Lock()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def path(self) -> str:
        """Where the ledger is, without its password (for messages)."""
        return redact(self.url)

    @property
    def location(self) -> str:
        """The URL as given to `open_store`, without its password (it is shown in stats)."""
        return redact(self.url)

    def _on_sealed(self, head: Head) -> None:
        with self._sealed:
            self._sealed.notify_all()

    def _read(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `work` on a pooled connection; while the server is unreachable (a lost
        connection, a failover under way) try again with a bounded back-off for up to
        `reconnect_timeout`, then ConnectionLostError. Blocks the calling thread."""
        if self._closed:
            raise LedgerClosedError(f"the ledger at {self.path} was closed")
        failure = ""
        refusals = 0
        for remaining in retrying(time.monotonic() + self._reconnect_timeout):
            try:
                with self._pool.connection(timeout=remaining) as connection:
                    try:
                        return work(connection)
                    except psycopg.OperationalError as error:
                        if not connection.broken:  # a deadlock, a cancelled query: no outage
                            refusals += 1
                            if refusals > 1:  # tried once more already
                                raise LedgerError(f"the PostgreSQL ledger at {self.path}: "
                                                  f"{describe(error)}") from None
                        raise
                    finally:
                        if not connection.closed:
                            connection.rollback()
            except psycopg.OperationalError as error:
                failure = f"lost the connection: {describe(error)}"
            except ConnectionLostError as error:
                failure = error.reason
        raise ConnectionLostError(
            f"the PostgreSQL ledger at {self.path} did not answer for "
            f"{self._reconnect_timeout:g} s ({failure}): is the server (or, after a failover, "
            "the new primary in the URL's host list) up?") from None

    # -- writing -------------------------------------------------------------------------

    def append(self, session_id: str, events: Iterable[Event | UnknownEvent],
               expected_version: int, *, lease: Lease | None = None,
               release_lease: bool = False) -> list[Recorded]:
        """Append atomically and durably; raise ConcurrencyError if the version is stale, and
        StaleLeaseError if `lease` (when given) is no longer the session's; `release_lease`
        lets it go in the same transaction. Blocks until committed (and, by default,
        sealed)."""
        return self.append_atomically([SessionAppend(
            session_id, list(events), expected_version, lease=lease,
            release_lease=release_lease)])[0]

    def append_atomically(self, appends: Sequence[SessionAppend]) -> list[list[Recorded]]:
        """Append to several sessions in one transaction (all or none; original recorded_at
        times kept when given, for import), each fenced by its lease when it has one."""
        # With a sealer, the content seals are made here, in the caller's thread, so that the
        # writer can seal the batch in its own transaction (see `writer.py`).
        payloads = [encode_append(append, seal=self._seal) for append in appends]
        distinct_sessions([payload.session_id for payload in payloads])
        if not any(payload.events or payload.release_lease for payload in payloads):
            return [[] for _ in payloads]
        return self._submit(payloads)

    def append_verbatim(self, records: Sequence[bytes]) -> Head:
        """Append stored records exactly as they are (an export's bytes): same positions,
        links and hashes, already sealed; all or nothing (see `verbatim.py`)."""
        checked = [bytes(record) for record in records]
        self._check_writable()
        if not checked:
            return self.head()
        for attempt in (1, 2, 3):
            try:
                return self._read(lambda connection: write_verbatim(connection, checked))
            except UnsealedSessionError as error:
                if attempt == 3:
                    raise LedgerError(
                        f"sessions {error} keep getting appends not sealed yet: stop the nodes "
                        "appending to them before importing") from None
                self.seal_now()
        raise AssertionError("unreachable")

    def redact(self, session_id: str, version: int | None, *, reason: str = "",
               redacted_by: str | None = None) -> list[Recorded]:
        """Remove the content of one version of a session (None: of every record that still
        has some) and append a Redacted event for each (see `redaction.py`); returns them."""
        validate_session_id(session_id)
        self._check_writable()
        return redaction.redact(self, self._read, session_id, version, reason, redacted_by)

    def _check_writable(self) -> None:
        if self._closed:
            raise LedgerClosedError(f"the ledger at {self.path} was closed")
        if self._readonly:
            raise LedgerError(f"the ledger at {self.path} was opened read-only")

    def _submit(self, payloads: list[EncodedAppend]) -> list[list[Recorded]]:
        self._check_writable()
        try:
            return self.writer.write(payloads, self._append_timeout)
        except FutureTimeout:
            raise AppendOutcomeUnknownError(
                f"an append to {self.path} took over {self._append_timeout:g} s: read the "
                "session's version before appending again") from None

    # -- ownership ---------------------------------------------------------------------

    def acquire_lease(
        self, session_id: str, owner: LeaseOwner, ttl: float, *,
        take_over: LeaseOwner | None = None,
    ) -> Lease | None:
        """Take the session's lease for `ttl` seconds of server time, or None if another
        live owner holds it (unless it is `take_over`, found dead); a new owner gets a
        higher epoch, re-acquiring our own keeps it."""
        validate_session_id(session_id)
        self._check_writable()
        return self._read(lambda connection: leases.acquire(connection, session_id, owner,
                                                            ttl, take_over))

    def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend a lease for `ttl` seconds from now; None if it was taken over."""
        self._check_writable()
        return self._read(lambda connection: leases.renew(connection, lease, ttl))

    def release_lease(self, lease: Lease) -> bool:
        """Let a lease go at once (its epoch stays); whether it was still ours."""
        self._check_writable()
        return self._read(lambda connection: leases.release(connection, lease))

    def lease(self, session_id: str) -> Lease | None:
        """The session's lease record as stored (held, expired or released), or None."""
        validate_session_id(session_id)
        return self._read(lambda connection: leases.read(connection, [session_id])
                          ).get(session_id)

    def clock(self) -> float:
        """The server's clock (epoch seconds), against which leases expire."""
        return self._read(leases.clock)

    def seal_now(self) -> Head:
        """Seal every committed record below the horizon now; returns the sealed head."""
        self._check_writable()
        return self.sealer.seal_now()

    # -- reading -------------------------------------------------------------------------

    def read_session(self, session_id: str, from_version: int = 1) -> list[Recorded]:
        """One session's records from a version on (those not sealed yet at position 0)."""
        validate_session_id(session_id)
        rows = self._read(lambda connection: connection.execute(
            _SESSION_ROWS, [session_id, max(from_version, 1)], binary=True).fetchall())
        return [row_record(row[0], row[1], row[2], row[3], _bytes(row[4]), _bytes(row[5]))
                for row in rows]

    def latest(self, session_id: str, count: int) -> tuple[SessionInfo | None, list[Recorded]]:
        """A session's current info and its last `count` records, as of one moment."""
        validate_session_id(session_id)
        rows = self._read(lambda connection: connection.execute(
            _LATEST, {"id": session_id, "count": max(count, 1)}, binary=True).fetchall())
        if not rows:
            return None, []
        records = [row_record(row[2], row[3], row[4], row[5], _bytes(row[6]), _bytes(row[7]))
                   for row in rows if row[2] is not None]
        last_position = rows[-1][8] if records and records[-1].version == rows[0][0] else None
        return decode_info(bytes(rows[0][1]), last_position), records

    def read_all(self, from_position: int = 1, to_position: int | None = None
                 ) -> Iterator[Recorded]:
        """Every sealed record from a position on, in the global order."""
        for _, stored in self.read_raw(from_position, to_position):
            yield decode_record(stored[HASH_SIZE:])

    def read_raw(self, from_position: int = 1, to_position: int | None = None
                 ) -> Iterator[tuple[int, bytes]]:
        """Every sealed record as (position, stored hash + record bytes), like LMDB's."""
        position = max(from_position, 1)
        last = _MAX_POSITION if to_position is None else to_position
        while position <= last:
            rows = self._read(functools.partial(_raw_chunk, start=position, last=last))
            for row in rows:
                yield int(row[0]), bytes(row[1]) + bytes(row[2])
            if len(rows) < READ_CHUNK:
                return
            position = int(rows[-1][0]) + 1

    def read_session_raw(self, session_id: str, from_version: int = 1
                         ) -> list[tuple[int, bytes]]:
        """One session's sealed records as (position, stored hash + record), for audits."""
        validate_session_id(session_id)
        rows = self._read(lambda connection: connection.execute(
            _SESSION_RAW, [session_id, max(from_version, 1)], binary=True).fetchall())
        return [(int(row[0]), bytes(row[1]) + bytes(row[2])) for row in rows]

    def head(self) -> Head:
        """The last sealed position and its record's hash."""
        row = self._read(lambda connection: connection.execute(_HEAD).fetchone())
        return Head(int(row[0]), bytes(row[1])) if row is not None else Head(0, GENESIS)

    def count(self) -> int:
        """How many records are sealed."""
        return self.head().position

    def version(self, session_id: str) -> int:
        """A session's current version (0 if it does not exist)."""
        info = self.info(session_id)
        return info.version if info is not None else 0

    def info(self, session_id: str) -> SessionInfo | None:
        """A session's info from the index, or None."""
        entry = self.index_entry(session_id)
        return entry.info if entry is not None else None

    def index_entry(self, session_id: str) -> IndexEntry | None:
        """A session's index entry: its info and its last sealed record's hash (None if
        unknown; genesis if its last record is not sealed yet)."""
        validate_session_id(session_id)
        row = self._read(lambda connection: connection.execute(_INFO, [session_id], binary=True).fetchone())
        if row is None:
            return None
        return IndexEntry(info=decode_info(bytes(row[0]), row[1]),
                          last_hash=bytes(row[2]) if row[2] is not None else GENESIS)

    def require_info(self, session_id: str) -> SessionInfo:
        """A session's info; raises UnknownSessionError if unknown."""
        info = self.info(session_id)
        if info is None:
            raise UnknownSessionError(f"Session not found: {session_id}")
        return info

    def sessions(self) -> list[SessionInfo]:
        """Every session's info from the index."""
        def listing(connection: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            connection.execute("SET LOCAL jit = off")
            return connection.execute(_ALL_INFO, binary=True).fetchall()

        return [decode_info(bytes(info), position) for info, position in self._read(listing)]

    def subscribe(self, from_position: int = 1, poll_interval: float = 0.2) -> Subscription:
        """Catch up, then follow live seals (of every node: LISTEN wakes it, polling backs it)."""
        self._ensure_listener()
        return Subscription(self.read_all, from_position, self._sealed, poll_interval)

    def _ensure_listener(self) -> SealListener:
        with self._listener_lock:
            if self._listener is None:
                self._listener = SealListener(self.url, self._sealed,
                                              connect_timeout=self._connect_timeout)
            return self._listener

    @property
    def listener(self) -> SealListener | None:
        """The LISTEN connection's thread, once a subscription started it."""
        return self._listener

    def disk_size(self) -> int:
        """Bytes the ledger's tables and indexes take on the server."""
        row = self._read(lambda connection: connection.execute(_SIZE).fetchone())
        return int(row[0] or 0) if row is not None else 0

    def map_size(self) -> int:
        """Bytes reserved: the data's size (the server reserves nothing ahead for us)."""
        return self.disk_size()

    def copy_to(self, destination: str | os.PathLike[str], *, compact: bool = True) -> int:
        """Seal what can be sealed, then write the sealed log, as stored (same positions,
        bytes and hashes), into a new ledger at `destination` (a directory: LMDB; any
        location `open_store` takes); returns the copy's size. `compact` is moot here."""
        from ..factory import open_store  # the factory imports this package lazily

        with contextlib.suppress(LedgerError, psycopg.Error):
            self.seal_now()
        last = self.head().position
        with open_store(destination) as target:
            if target.head().position:
                raise LedgerError(f"{os.fspath(destination)} is not empty: copy into a new "
                                  "ledger")
            chunk: list[bytes] = []
            for _, stored in self.read_raw(1, last):
                chunk.append(stored[HASH_SIZE:])
                if len(chunk) == READ_CHUNK:
                    target.append_verbatim(chunk)
                    chunk = []
            if chunk:
                target.append_verbatim(chunk)
            return target.disk_size()

    # -- integrity -----------------------------------------------------------------------

    def verify(self, saved_head: Head | None = None, *,
               progress: Callable[[int], None] | None = None) -> PostgresVerifyReport:
        """Seal what can be sealed, then recompute the hash chains and indexes in one
        snapshot; the report also gives the seal lag."""
        with contextlib.suppress(LedgerError, psycopg.Error):
            self.seal_now()  # if it cannot, verify still reports what is sealed, and the lag

        def check(connection: psycopg.Connection[Any]) -> PostgresVerifyReport:
            connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            connection.read_only = True
            try:
                return verify_snapshot(connection, saved_head, progress, self._seal_lag_limit)
            finally:
                connection.rollback()
                connection.isolation_level = None
                connection.read_only = None

        return self._read(check)

    def rebuild_index(self) -> int:
        """Recompute the session index from the log in one transaction; returns the count."""

        def rebuild(connection: psycopg.Connection[Any]) -> int:
            # Appends upsert the index: this lock waits for those in flight and holds the rest.
            connection.execute("LOCK TABLE chatledger.sessions IN SHARE ROW EXCLUSIVE MODE")
            infos: dict[str, SessionInfo] = {}
            with connection.cursor(name="chatledger_rebuild") as rows:
                rows.itersize = 2000
                rows.execute("SELECT session_id, version, recorded_at, schema_version, event,"
                               " record FROM chatledger.events ORDER BY session_id, version")
                for row in rows:
                    recorded = row_record(row[0], row[1], row[2], row[3], _bytes(row[4]),
                                          _bytes(row[5]))
                    info = infos.get(recorded.session_id) or SessionInfo(
                        session_id=recorded.session_id)
                    try:
                        infos[recorded.session_id] = evolve(info, recorded)
                    except ProjectionError as error:
                        raise LedgerError(f"cannot rebuild the index: {error}") from None
            connection.execute("DELETE FROM chatledger.sessions")
            with connection.cursor() as cursor, cursor.copy(
                    "COPY chatledger.sessions (session_id, version, info, position) FROM STDIN"
            ) as copy:
                for session_id, info in infos.items():
                    copy.write_row((session_id, info.version, encode_info(info),
                                    info.last_position or None))
            connection.commit()
            return len(infos)

        return self._read(rebuild)

    def close(self) -> None:
        """Finish queued appends, stop the threads and close every connection."""
        if self._closed:
            return
        self._closed = True  # new calls are refused from here on
        self.writer.close()
        self.sealer.close()
        if self._listener is not None:
            self._listener.close()
        self._pool.close()


def _prepare_schema(connection: psycopg.Connection[Any], url_for_messages: str, *,
                    create: bool, readonly: bool) -> None:
    """Create or migrate the schema; without `create`, a database with none is missing;
    read-only, nothing is written and an older schema is refused too."""
    found = stored_version(connection)
    if not found and not create:
        raise LedgerMissingError(f"there is no ledger at {url_for_messages}")
    if readonly:
        if found != SCHEMA_VERSION:
            raise LedgerError(
                f"the PostgreSQL ledger at {url_for_messages} has chatledger schema {found}; "
                f"read-only, this release needs schema {SCHEMA_VERSION}")
        return
    migrate(connection, url_for_messages)


def _raw_chunk(connection: psycopg.Connection[Any], *, start: int, last: int) -> list[Any]:
    """Up to READ_CHUNK sealed rows from position `start` to `last`."""
    return connection.execute(_RAW_FROM, [start, last, READ_CHUNK], binary=True).fetchall()


def _bytes(value: Any) -> bytes | None:
    return bytes(value) if value is not None else None


def open_postgresql_store(url: str, **options: Any) -> PostgresStore:
    """Open (creating or migrating its schema) the PostgreSQL ledger at a `postgresql://` URL;
    LedgerError if the server is down, refuses us, or holds a newer schema."""
    return PostgresStore(url, **options)
