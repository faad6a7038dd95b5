"""The PostgreSQL ledger's schema, created and migrated by chatledger itself.

Tables (all in the `chatledger` schema):
- `events`: one row per event. Written by an append: `session_id`, `version` (the primary
  key, so a stale expected version can never write a second row), `recorded_at`,
  `schema_version`, the encoded `event`, and `txid`, the appending transaction's id
  (`pg_current_xact_id()`), with `seq` ordering rows inside one transaction. Written once more
  by the sealer: the global `position`, the stored `record` (the very bytes LMDB stores: a
  MessagePack envelope holding both hash links) and its `hash`; `event` is then cleared,
  since the record holds it.
- `sessions`: the session index (the folded SessionInfo, its `last_position` filled in on
  reading), updated in the append's transaction.
- `seal`: one row, the sealed head (last position and its hash) and the transaction horizon
  sealed so far; the sealer's lock.
- `leases` (since schema 2): a session's lease record (`leases.py`): its fencing `epoch`, its
  holder's `host`, `pid`, `started_at` and `token` (all NULL once released) and `expires_at`
  (server clock, epoch seconds); rows are never deleted, so an epoch is never reused. Schema 3
  replaced schema 2's `owner` name and timestamptz expiry: an old holder keeps its lease until
  it expires, as the owner `host=<name>, pid=0`.
- `schema_version`: one row, the version of this layout.

A database holding a newer layout is refused; older ones are migrated in order, under an
advisory lock so that nodes starting together migrate once. This module only runs DDL.
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg

from ...errors import LedgerError
from ..hashing import GENESIS

SCHEMA_VERSION = 3
"""The layout this release writes and reads."""

MIGRATION_LOCK = 0x6368_6C67  # "chlg": serialises migrations between nodes
SESSION_LOCK_CLASS = 0x6368_6C73  # "chls": the first key of per-session advisory locks
SEAL_CHANNEL = "chatledger_sealed"



def session_lock_key(session_id: str) -> int:
    """The second key of a session's advisory lock (collisions only make two sessions wait)."""
    digest = hashlib.blake2b(session_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


_V1 = f"""
CREATE TABLE chatledger.events (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    session_id text NOT NULL,
    version bigint NOT NULL CHECK (version > 0),
    recorded_at timestamptz NOT NULL,
    schema_version integer NOT NULL,
    event bytea,
    position bigint,
    hash bytea,
    record bytea,
    PRIMARY KEY (session_id, version)
);
CREATE UNIQUE INDEX events_position ON chatledger.events (position);
CREATE INDEX events_unsealed ON chatledger.events (txid, seq) WHERE position IS NULL;
CREATE TABLE chatledger.sessions (
    session_id text PRIMARY KEY,
    version bigint NOT NULL,
    info bytea NOT NULL
);
CREATE TABLE chatledger.seal (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position bigint NOT NULL,
    hash bytea NOT NULL,
    sealed_below xid8 NOT NULL,
    sealed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO chatledger.seal (position, hash, sealed_below)
    VALUES (0, '\\x{GENESIS.hex()}', '0');
"""

_V2 = """
CREATE TABLE chatledger.leases (
    session_id text PRIMARY KEY,
    owner text NOT NULL,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
"""

_V3 = """
ALTER TABLE chatledger.leases
    ADD COLUMN host text, ADD COLUMN pid bigint, ADD COLUMN started_at double precision,
    ADD COLUMN token text,
    ALTER COLUMN expires_at TYPE double precision USING
        CASE WHEN expires_at = '-infinity' THEN 0 ELSE extract(epoch FROM expires_at) END;
UPDATE chatledger.leases SET host = owner, pid = 0, started_at = 0, token = ''
    WHERE expires_at > 0;
UPDATE chatledger.leases SET expires_at = 0 WHERE host IS NULL;
ALTER TABLE chatledger.leases DROP COLUMN owner;
"""

MIGRATIONS: dict[int, str] = {1: _V1, 2: _V2, 3: _V3}
"""Target version -> the DDL that brings the previous version to it."""


def stored_version(connection: psycopg.Connection[Any]) -> int:
    """The chatledger schema version the database holds (0: none yet). Writes nothing."""
    with connection.transaction():
        row = connection.execute("SELECT to_regclass('chatledger.schema_version') IS NOT NULL"
                                 ).fetchone()
        if row is None or not row[0]:
            return 0
        found = connection.execute("SELECT version FROM chatledger.schema_version").fetchone()
    return int(found[0]) if found is not None else 0


def migrate(connection: psycopg.Connection[Any], url_for_messages: str) -> int:
    """Create or upgrade the schema in one transaction; refuse a newer one. Returns the
    version found before (0 for a new database)."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        connection.execute("CREATE SCHEMA IF NOT EXISTS chatledger")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS chatledger.schema_version ("
            " singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),"
            " version integer NOT NULL)"
        )
        row = connection.execute("SELECT version FROM chatledger.schema_version").fetchone()
        found = int(row[0]) if row is not None else 0
        if found > SCHEMA_VERSION:
            raise LedgerError(
                f"the PostgreSQL ledger at {url_for_messages} has chatledger schema {found}; "
                f"this release knows schema {SCHEMA_VERSION}: upgrade chatledger"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            connection.execute(MIGRATIONS[version].encode())
        if found == 0:
            connection.execute("INSERT INTO chatledger.schema_version (version) VALUES (%s)",
                               [SCHEMA_VERSION])
        elif found < SCHEMA_VERSION:
            connection.execute("UPDATE chatledger.schema_version SET version = %s",
                               [SCHEMA_VERSION])
    return found
