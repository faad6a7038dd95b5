"""The three stores under test, behind one small adapter each: chatledger's EventLog, a plain
SQLite event table, and the `eventsourcing` library with its SQLite persistence.

Each adapter loads the shared dataset, appends one event per durable commit for the throughput
runs, replays the whole log, rehydrates one session, lists sessions, and reports its bytes on
disk. Durability is the same on every side: an append has been flushed to stable storage
(fsync/fdatasync) when it returns. Adapters never share files.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from itertools import islice
from typing import Any
from uuid import UUID

import msgspec

from chatledger.events import AnyEvent, Event, Recorded, SessionCreated, SessionInfo, evolve
from chatledger.storage import EventLog
from chatledger.storage.hashing import HASH_SIZE

from .common import disk_bytes

Writer = Callable[[Event], None]
"""Appends one event to the writer's own session in one durable commit."""

LOAD_THREADS = 64


class ConcurrencyConflict(Exception):
    """A stale expected version (the baseline's version of chatledger's ConcurrencyError)."""


# -- chatledger ---------------------------------------------------------------------------------


class ChatledgerStore:
    """chatledger's LMDB EventLog (group commit; sync=True, metasync=True)."""

    name = "chatledger"
    durability = (
        "LMDB sync=True, metasync=True: every append is fdatasync'ed (data + meta page) "
        "before it returns; concurrent appends share one commit (group commit)"
    )

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "chatledger")
        self.log = EventLog(self.path)

    def load(self, sessions: Sequence[tuple[str, list[Event]]]) -> None:
        """Append every session's events (one append per session, many threads at once)."""
        log = self.log
        with ThreadPoolExecutor(LOAD_THREADS) as pool:
            for _ in pool.map(lambda item: log.append(item[0], item[1], 0), sessions,
                              chunksize=64):
                pass

    def writer(self, session_id: str) -> Writer:
        """A writer for a new session (created now, outside any timing)."""
        log = self.log
        log.append(session_id, [SessionCreated(mode="user")], 0)
        version = [1]

        def write(event: Event) -> None:
            log.append(session_id, [event], version[0])
            version[0] += 1

        return write

    def replay(self) -> int:
        """Read every record in log order, decoded; returns how many."""
        count = 0
        for _ in self.log.read_all():
            count += 1
        return count

    def raw_scan_and_decode(self) -> int:
        """The ceiling of a replay: one LMDB read transaction over the whole log, each value
        decoded by msgspec and dropped (no chunks, no checks); returns how many."""
        store = self.log.store
        decode = msgspec.msgpack.Decoder(Recorded).decode
        count = 0
        with store.shared.transaction() as txn:
            for value in txn.cursor(db=store.log_db).iternext(keys=False, values=True):
                decode(value[HASH_SIZE:])
                count += 1
        return count

    def stored_records(self, count: int) -> list[bytes]:
        """The first `count` records as stored (without their hash), held in memory."""
        return [value[HASH_SIZE:] for _, value in islice(self.log.read_raw(1), count)]

    def rehydrate(self, session_id: str) -> SessionInfo:
        """Read one session's stream and fold it into its state (what an actor does)."""
        info = SessionInfo(session_id=session_id)
        for recorded in self.log.read_session(session_id):
            info = evolve(info, recorded)
        return info

    def list_sessions(self) -> int:
        """List every session's info; returns how many."""
        return len(self.log.sessions())

    def verify(self) -> bool:
        """Recompute both hash chains and both indexes."""
        return self.log.verify().ok

    def disk_bytes(self) -> int:
        """Bytes allocated on disk."""
        return disk_bytes(self.path)

    def close(self) -> None:
        """Close the log."""
        self.log.close()


# -- a plain SQLite event table -------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    recorded_at REAL NOT NULL,
    type TEXT NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (stream_id, version)
)
"""
_INSERT = "INSERT INTO events (stream_id, version, recorded_at, type, data) VALUES (?, ?, ?, ?, ?)"
_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(AnyEvent)


def _connect_sqlite(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    return connection


class SqliteStore:
    """An event table in SQLite: WAL, synchronous=FULL, UNIQUE(stream_id, version), one
    commit per append, one connection per thread."""

    name = "sqlite"
    durability = (
        "SQLite WAL, synchronous=FULL: the WAL is fsync'ed at every COMMIT; one transaction "
        "(BEGIN IMMEDIATE ... COMMIT) per append; UNIQUE(stream_id, version) rejects stale writers"
    )

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "events.sqlite")
        self._local = threading.local()
        self.connection.executescript(_SCHEMA)
        self.synchronous = self.connection.execute("PRAGMA synchronous").fetchone()[0]

    @property
    def connection(self) -> sqlite3.Connection:
        """This thread's connection."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = _connect_sqlite(self.path)
        return connection

    def append(self, session_id: str, events: Sequence[Event], expected_version: int) -> None:
        """Append in one durable transaction; a taken version raises ConcurrencyConflict."""
        now = time.time()
        rows = [
            (session_id, expected_version + offset + 1, now, type(event).__struct_config__.tag,
             _encoder.encode(event))
            for offset, event in enumerate(events)
        ]
        connection = self.connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(_INSERT, rows)
        except sqlite3.IntegrityError:
            connection.execute("ROLLBACK")
            raise ConcurrencyConflict(session_id) from None
        connection.execute("COMMIT")

    def load(self, sessions: Sequence[tuple[str, list[Event]]]) -> None:
        """Insert every session's events in large transactions (SQLite's fastest bulk path)."""
        connection = self.connection
        now = time.time()
        for start in range(0, len(sessions), 5_000):
            rows = [
                (session_id, version, now, type(event).__struct_config__.tag,
                 _encoder.encode(event))
                for session_id, events in sessions[start:start + 5_000]
                for version, event in enumerate(events, 1)
            ]
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(_INSERT, rows)
            connection.execute("COMMIT")

    def writer(self, session_id: str) -> Writer:
        """A writer for a new session (created now, outside any timing)."""
        self.append(session_id, [SessionCreated(mode="user")], 0)
        version = [1]

        def write(event: Event) -> None:
            self.append(session_id, [event], version[0])
            version[0] += 1

        return write

    def _recorded(self, row: tuple[Any, ...]) -> Recorded:
        position, session_id, version, recorded_at, data = row
        return Recorded(
            position=position,
            session_id=session_id,
            version=version,
            recorded_at=datetime.fromtimestamp(recorded_at, timezone.utc),
            schema_version=2,
            prev_session_hash=b"",
            prev_log_hash=b"",
            event=_decoder.decode(data),
        )

    def replay(self) -> int:
        """Read every row in position order, decoded into the same records; returns how many."""
        cursor = self.connection.execute(
            "SELECT position, stream_id, version, recorded_at, data FROM events ORDER BY position"
        )
        count = 0
        recorded = self._recorded
        while True:
            rows = cursor.fetchmany(4096)
            if not rows:
                return count
            for row in rows:
                recorded(row)
            count += len(rows)

    def rehydrate(self, session_id: str) -> SessionInfo:
        """Select one stream by (stream_id, version), decode, fold with the same projection."""
        rows = self.connection.execute(
            "SELECT position, stream_id, version, recorded_at, data FROM events "
            "WHERE stream_id = ? ORDER BY version",
            (session_id,),
        ).fetchall()
        info = SessionInfo(session_id=session_id)
        for row in rows:
            info = evolve(info, self._recorded(row))
        return info

    def list_sessions(self) -> int:
        """One row per session (id, version, first and last activity) by GROUP BY."""
        rows = self.connection.execute(
            "SELECT stream_id, MAX(version), MIN(recorded_at), MAX(recorded_at) "
            "FROM events GROUP BY stream_id"
        ).fetchall()
        return len(rows)

    def disk_bytes(self) -> int:
        """Bytes allocated on disk (database, WAL and shared-memory files, after a checkpoint)."""
        self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return disk_bytes(self.path, self.path + "-wal", self.path + "-shm")

    def close(self) -> None:
        """Close this thread's connection (others are closed when their threads end)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


# -- the eventsourcing library --------------------------------------------------------------------


_ES_CLASSES: list[tuple[Any, Any]] = []


def _eventsourcing_classes() -> tuple[Any, Any]:
    """The library's Application and our aggregate (defined once, late: the library is an
    optional dependency and registers each class under a topic only once)."""
    if not _ES_CLASSES:
        _ES_CLASSES.append(_define_eventsourcing_classes())
    return _ES_CLASSES[0]


def _define_eventsourcing_classes() -> tuple[Any, Any]:
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class Conversation(Aggregate):  # type: ignore[misc]
        """A session as an eventsourcing aggregate, with the same events and fields."""

        @staticmethod
        def create_id(session_id: str) -> UUID:
            """The aggregate id is the session's uuid."""
            return UUID(session_id)

        @event("SessionCreated")
        def __init__(self, session_id: str, mode: str, study_id: str | None) -> None:
            self.mode = mode
            self.study_id = study_id
            self.message_count = 0
            self.turn_count = 0
            self.open_turn: int | None = None
            self.total_cost_usd = 0.0

        @event("MessageSent")
        def send_message(self, turn: int, text: str, canvas_state: Any) -> None:
            self.message_count += 1
            self.turn_count = max(self.turn_count, turn)

        @event("RunStarted")
        def start_run(self, turn: int, argv: list[str], prompt_digest: str,
                      template_version: int, host: str, pid: int) -> None:
            self.open_turn = turn

        @event("ResponseReceived")
        def receive_response(self, turn: int, text: str, tool_calls: list[Any],
                             duration: float, cost_usd: float | None, usage: Any,
                             agent_session_id: str | None) -> None:
            self.open_turn = None
            self.message_count += 1
            self.total_cost_usd += cost_usd or 0.0

    class Conversations(Application):  # type: ignore[misc]
        """The application holding the conversations."""

    return Conversations, Conversation


def _force_full_sync() -> None:
    """Make every connection of the library's SQLite pool use synchronous=FULL (explicitly)."""
    from eventsourcing.sqlite import SQLiteConnectionPool

    if getattr(SQLiteConnectionPool, "_benchmark_full_sync", False):
        return
    original = SQLiteConnectionPool._create_connection

    def create_connection(self: Any) -> Any:
        connection = original(self)
        connection._sqlite_conn.execute("PRAGMA synchronous=FULL")
        return connection

    SQLiteConnectionPool._create_connection = create_connection
    SQLiteConnectionPool._benchmark_full_sync = True


class EventsourcingStore:
    """The eventsourcing library (Application + Aggregate) with its SQLite persistence."""

    name = "eventsourcing"
    durability = (
        "eventsourcing's SQLite persistence (WAL), with synchronous=FULL set on every pooled "
        "connection: each Application.save() is one fsync'ed transaction"
    )

    def __init__(self, directory: str) -> None:
        _force_full_sync()
        application_class, self.aggregate_class = _eventsourcing_classes()
        self.path = os.path.join(directory, "eventsourcing.sqlite")
        self.app = application_class(
            env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": self.path}
        )
        with self.app.factory.datastore.transaction(commit=False) as cursor:
            cursor.execute("PRAGMA synchronous")
            self.synchronous = cursor.fetchone()[0]

    def _apply(self, aggregate: Any, event: Event) -> None:
        fields = msgspec.to_builtins(event)
        tag = fields.pop("type")
        if tag == "message_sent":
            aggregate.send_message(fields["turn"], fields["text"], fields.get("canvas_state"))
        elif tag == "run_started":
            aggregate.start_run(fields["turn"], fields.get("argv", []),
                                fields.get("prompt_digest", ""),
                                fields.get("template_version", 0), fields.get("host", ""),
                                fields.get("pid", 0))
        elif tag == "response_received":
            aggregate.receive_response(fields["turn"], fields["text"],
                                       fields.get("tool_calls", []), fields.get("duration", 0.0),
                                       fields.get("cost_usd"), fields.get("usage"),
                                       fields.get("agent_session_id"))
        else:
            raise ValueError(f"the benchmark does not model {tag}")

    def _build(self, session_id: str, events: list[Event]) -> Any:
        created = events[0]
        aggregate = self.aggregate_class(session_id=session_id, mode=created.mode,  # type: ignore[attr-defined]
                                         study_id=created.study_id)  # type: ignore[attr-defined]
        for event in events[1:]:
            self._apply(aggregate, event)
        return aggregate

    def load(self, sessions: Sequence[tuple[str, list[Event]]]) -> None:
        """Save the aggregates in batches of 500 per Application.save() (its bulk path)."""
        for start in range(0, len(sessions), 500):
            self.app.save(*[self._build(session_id, events)
                            for session_id, events in sessions[start:start + 500]])

    def writer(self, session_id: str) -> Writer:
        """A writer for a new aggregate (created and saved now, outside any timing)."""
        aggregate = self._build(session_id, [SessionCreated(mode="user")])
        self.app.save(aggregate)

        def write(event: Event) -> None:
            self._apply(aggregate, event)
            self.app.save(aggregate)

        return write

    def replay(self) -> int:
        """Select every notification in order and map it to its domain event; returns how many."""
        recorder = self.app.recorder
        to_domain_event = self.app.mapper.to_domain_event
        start = 1
        count = 0
        while True:
            notifications = recorder.select_notifications(start, 4096)
            if not notifications:
                return count
            for notification in notifications:
                to_domain_event(notification)
            count += len(notifications)
            start = notifications[-1].id + 1

    def rehydrate(self, session_id: str) -> Any:
        """Get the aggregate from the repository (no cache, no snapshots)."""
        return self.app.repository.get(UUID(session_id))

    def disk_bytes(self) -> int:
        """Bytes allocated on disk (database, WAL and shared-memory files, after a checkpoint)."""
        with self.app.factory.datastore.transaction(commit=False) as cursor:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return disk_bytes(self.path, self.path + "-wal", self.path + "-shm")

    def close(self) -> None:
        """Close the application's connections."""
        self.app.close()


Store = ChatledgerStore | SqliteStore | EventsourcingStore
