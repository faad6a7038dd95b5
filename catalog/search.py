"""Full-text search over what was said: users' messages and the agent's answers.

A side index in SQLite's FTS5 (the standard library's sqlite3), fed from the log and
rebuildable from it: it remembers the last log position it indexed (and that record's hash),
and before every query it catches up from there with `read_all`, so it stays correct while
other processes write. If the log no longer holds that record as indexed (another ledger at
the path, a restore), the index is rebuilt from position 1. The index is a cache: deleting
its file loses nothing. Each row's rowid is its log position, so hits come newest first
without sorting. This module never writes to the log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import msgspec

from ..events import MessageSent, Recorded, Redacted, ResponseReceived, SessionCreated
from ..storage import AuditStore, local_directory
from ..storage.hashing import HASH_SIZE

logger = logging.getLogger(__name__)

INDEX_SUFFIX = ".search.sqlite3"
SCHEMA_VERSION = 2
DEFAULT_HIT_LIMIT = 50
_BATCH = 5000
"""Rows inserted per executemany while catching up."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS owners (session_id TEXT PRIMARY KEY, owner TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS moments (position INTEGER PRIMARY KEY, recorded_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS moments_by_time ON moments (recorded_at);
CREATE VIRTUAL TABLE IF NOT EXISTS said USING fts5(
    text, owner_key, session_id UNINDEXED, turn UNINDEXED, role UNINDEXED,
    recorded_at UNINDEXED, tokenize = 'unicode61 remove_diacritics 2'
);
"""
# `owner_key` holds one token per row naming its session's owner, so an owner's hits are the
# intersection of two doclists, not a filter over every match of the words; `moments` turns
# `since` into a lower bound on the rowid (the log's order is its time order).


class SearchHit(msgspec.Struct, frozen=True, kw_only=True):
    """A message or answer that matched: where it is (session, turn, position), when, whose."""

    session_id: str
    turn: int
    role: str  # "user" | "assistant"
    recorded_at: datetime
    position: int
    snippet: str
    owner: str | None = None


def index_path_for(location: str) -> Path | None:
    """Where the search index of a ledger lives: beside its directory (None: in memory)."""
    directory = local_directory(location)
    if directory is None:
        return None
    return directory.with_name(directory.name + INDEX_SUFFIX)


def word_query(text: str) -> str:
    """An FTS5 query matching every word of `text` (each quoted: no query syntax leaks in)."""
    words = text.split()
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


def owner_key(owner: str | None) -> str:
    """The single token that names an owner in the index ("" for no owner)."""
    if owner is None:
        return ""
    return "o" + hashlib.sha256(owner.encode()).hexdigest()[:24]


def _create_schema(connection: sqlite3.Connection) -> None:
    """Create the tables; an index file of another schema version is dropped (it is a cache)."""
    connection.executescript(_SCHEMA)
    row = connection.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is not None and int(row[0]) != SCHEMA_VERSION:
        connection.executescript(
            "DROP TABLE said; DROP TABLE owners; DROP TABLE moments; DROP TABLE meta;")
        connection.executescript(_SCHEMA)


class SearchIndex:
    """The search side index of one ledger; safe to use from several threads (one lock)."""

    def __init__(self, log: AuditStore, path: str | os.PathLike[str] | None = None) -> None:
        self.log = log
        self.path = Path(path) if path is not None else index_path_for(log.location)
        self._lock = threading.Lock()
        self._connection = self._connect()

    def _connect(self) -> sqlite3.Connection:
        target = ":memory:"
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                target = str(self.path)
                connection = sqlite3.connect(target, check_same_thread=False, timeout=30,
                                             isolation_level=None)
                connection.execute("PRAGMA journal_mode=WAL")
                _create_schema(connection)
                return connection
            except (OSError, sqlite3.OperationalError) as error:
                logger.warning("search index %s cannot be written (%s): kept in memory",
                               self.path, error)
                target = ":memory:"
        connection = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        _create_schema(connection)
        return connection

    def close(self) -> None:
        """Close the index file."""
        with self._lock:
            self._connection.close()

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- upkeep -------------------------------------------------------------------------

    def indexed_position(self) -> int:
        """The last log position the index holds."""
        row = self._connection.execute(
            "SELECT value FROM meta WHERE key = 'position'").fetchone()
        return int(row[0]) if row else 0

    def _indexed_hash(self) -> bytes | None:
        row = self._connection.execute("SELECT value FROM meta WHERE key = 'hash'").fetchone()
        return bytes(row[0]) if row else None

    def _still_matches_log(self, position: int) -> bool:
        """Whether the log still holds, at `position`, the record the index last indexed."""
        if position == 0:
            return True
        if self.log.head().position < position:
            return False
        return self._record_hash(position) == self._indexed_hash()

    def _record_hash(self, position: int) -> bytes | None:
        """The stored hash of the record at `position` (None if there is none)."""
        records = self.log.read_raw(position)
        try:
            first = next(records, None)
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                close()
        if first is None or first[0] != position:
            return None
        return bytes(first[1][:HASH_SIZE])

    def catch_up(self) -> int:
        """Index what the log holds beyond the indexed position; returns how many records
        were read. Blocks while it indexes (another process catching up waits its turn)."""
        with self._lock:
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                start = self.indexed_position()
                if not self._still_matches_log(start):
                    logger.info("search index no longer matches the log: rebuilding")
                    connection.execute("DELETE FROM said")
                    connection.execute("DELETE FROM owners")
                    connection.execute("DELETE FROM moments")
                    start = 0
                head = self.log.head().position
                if head <= start:
                    connection.execute("COMMIT")
                    return 0
                owners = self._index(self.log.read_all(start + 1, head))
                connection.executemany(
                    "INSERT OR REPLACE INTO owners (session_id, owner) VALUES (?, ?)",
                    owners.items())
                connection.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('position', ?)", (head,))
                connection.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('hash', ?)",
                                   (self._record_hash(head),))
                connection.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)",
                    (SCHEMA_VERSION,))
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            return head - start

    def _index(self, records: Iterable[Recorded]) -> dict[str, str]:
        """Insert the rows of what was said in `records`; returns the owners they created."""
        owners: dict[str, str] = {}
        keys: dict[str, str] = {}

        def key_of(session_id: str) -> str:
            key = keys.get(session_id)
            if key is None:
                owner = owners.get(session_id)
                if owner is None:
                    row = self._connection.execute(
                        "SELECT owner FROM owners WHERE session_id = ?", (session_id,)
                    ).fetchone()
                    owner = row[0] if row else None
                key = keys[session_id] = owner_key(owner)
            return key

        batch: list[tuple[object, ...]] = []
        for recorded in records:
            event = recorded.event
            if isinstance(event, MessageSent):
                role = "user"
            elif isinstance(event, ResponseReceived):
                role = "assistant"
            else:
                if isinstance(event, Redacted):  # what was said there is gone: forget it
                    self._insert(batch)
                    batch.clear()
                    self._connection.execute("DELETE FROM said WHERE rowid = ?",
                                             (event.position,))
                if isinstance(event, SessionCreated) and event.owner is not None:
                    owners[recorded.session_id] = event.owner
                    keys.pop(recorded.session_id, None)
                continue
            batch.append((recorded.position, event.text, key_of(recorded.session_id),
                          recorded.session_id, event.turn, role,
                          recorded.recorded_at.timestamp()))
            if len(batch) >= _BATCH:
                self._insert(batch)
                batch.clear()
        self._insert(batch)
        return owners

    def _insert(self, batch: list[tuple[object, ...]]) -> None:
        if batch:
            self._connection.executemany(
                "INSERT INTO said (rowid, text, owner_key, session_id, turn, role, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
            self._connection.executemany(
                "INSERT OR REPLACE INTO moments (position, recorded_at) VALUES (?, ?)",
                [(row[0], row[6]) for row in batch])

    def rebuild(self) -> int:
        """Drop the index and build it again from the whole log; returns records read."""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            self._connection.execute("DELETE FROM said")
            self._connection.execute("DELETE FROM owners")
            self._connection.execute("DELETE FROM moments")
            self._connection.execute("DELETE FROM meta")
            self._connection.execute("COMMIT")
        return self.catch_up()

    # -- queries ------------------------------------------------------------------------

    def search(
        self,
        text: str,
        *,
        owner: str | None = None,
        since: datetime | None = None,
        limit: int = DEFAULT_HIT_LIMIT,
        catch_up: bool = True,
    ) -> list[SearchHit]:
        """Messages and answers holding every word of `text`, newest first: of `owner`'s
        sessions only, and recorded at or after `since`, if given. Catches up first."""
        words = word_query(text)
        if not words:
            return []
        if catch_up:
            self.catch_up()
        query = f"text : ({words})"
        if owner is not None:
            query = f'owner_key : "{owner_key(owner)}" AND {query}'
        sql = ("SELECT said.rowid, snippet(said, 0, '[', ']', '…', 12), said.session_id, "
               "said.turn, said.role, said.recorded_at, owners.owner FROM said "
               "LEFT JOIN owners ON owners.session_id = said.session_id "
               "WHERE said MATCH ?")
        parameters: list[object] = [query]
        if owner is not None:
            sql += " AND owners.owner = ?"  # a hash collision of owner keys cannot leak hits
            parameters.append(owner)
        if since is not None:
            moment = since.timestamp()
            with self._lock:
                first = self._connection.execute(
                    "SELECT position FROM moments WHERE recorded_at >= ? "
                    "ORDER BY recorded_at LIMIT 1", (moment,)).fetchone()
            if first is None:
                return []
            sql += " AND said.rowid >= ? AND said.recorded_at >= ?"
            parameters.extend((first[0], moment))
        sql += " ORDER BY said.rowid DESC LIMIT ?"
        parameters.append(limit)
        with self._lock:
            rows = self._connection.execute(sql, parameters).fetchall()
        return [
            SearchHit(session_id=session_id, turn=int(turn), role=role, position=int(position),
                      recorded_at=datetime.fromtimestamp(moment, timezone.utc),
                      snippet=snippet, owner=owner_of)
            for position, snippet, session_id, turn, role, moment, owner_of in rows
        ]
