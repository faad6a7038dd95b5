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

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import msgspec

from ..events import MessageSent, Recorded, ResponseReceived, SessionCreated
from ..storage import AuditStore, local_directory
from ..storage.hashing import HASH_SIZE

logger = logging.getLogger(__name__)

INDEX_SUFFIX = ".search.sqlite3"
SCHEMA_VERSION = 1
DEFAULT_HIT_LIMIT = 50
_BATCH = 5000
"""Rows inserted per executemany while catching up."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS owners (session_id TEXT PRIMARY KEY, owner TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS owners_by_owner ON owners (owner);
CREATE VIRTUAL TABLE IF NOT EXISTS said USING fts5(
    text, session_id UNINDEXED, turn UNINDEXED, role UNINDEXED, recorded_at UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 2'
);
"""


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


def _rows(records: Iterable[Recorded], owners: list[tuple[str, str]]) -> Iterator[tuple]:
    for recorded in records:
        event = recorded.event
        if isinstance(event, MessageSent):
            role = "user"
        elif isinstance(event, ResponseReceived):
            role = "assistant"
        else:
            if isinstance(event, SessionCreated) and event.owner is not None:
                owners.append((recorded.session_id, event.owner))
            continue
        yield (recorded.position, event.text, recorded.session_id, event.turn, role,
               recorded.recorded_at.timestamp())


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
                connection.executescript(_SCHEMA)
                return connection
            except (OSError, sqlite3.OperationalError) as error:
                logger.warning("search index %s cannot be written (%s): kept in memory",
                               self.path, error)
                target = ":memory:"
        connection = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        connection.executescript(_SCHEMA)
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
                    start = 0
                head = self.log.head().position
                if head <= start:
                    connection.execute("COMMIT")
                    return 0
                owners: list[tuple[str, str]] = []
                batch: list[tuple] = []
                for row in _rows(self.log.read_all(start + 1, head), owners):
                    batch.append(row)
                    if len(batch) >= _BATCH:
                        self._insert(batch)
                        batch.clear()
                self._insert(batch)
                connection.executemany(
                    "INSERT OR REPLACE INTO owners (session_id, owner) VALUES (?, ?)", owners)
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

    def _insert(self, batch: list[tuple]) -> None:
        if batch:
            self._connection.executemany(
                "INSERT INTO said (rowid, text, session_id, turn, role, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", batch)

    def rebuild(self) -> int:
        """Drop the index and build it again from the whole log; returns records read."""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            self._connection.execute("DELETE FROM said")
            self._connection.execute("DELETE FROM owners")
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
        query = word_query(text)
        if not query:
            return []
        if catch_up:
            self.catch_up()
        sql = ("SELECT said.rowid, snippet(said, 0, '[', ']', '…', 12), said.session_id, "
               "said.turn, said.role, said.recorded_at, owners.owner FROM said "
               "LEFT JOIN owners ON owners.session_id = said.session_id "
               "WHERE said MATCH ?")
        parameters: list[object] = [query]
        if owner is not None:
            sql += " AND owners.owner = ?"
            parameters.append(owner)
        if since is not None:
            sql += " AND said.recorded_at >= ?"
            parameters.append(since.timestamp())
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
