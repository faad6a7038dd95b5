"""The PostgreSQL ledger's schema, created and migrated by chatledger itself.

Tables (all in the `chatledger` schema):
- `events`: one row per event. Written by an append: `session_id`, `version` (the primary
  key, so a stale expected version can never write a second row), `recorded_at`,
  `schema_version`, and `txid`, the appending transaction's id (`pg_current_xact_id()`), with
  `seq` ordering rows inside one transaction; then either, sealed in the append's own
  transaction (schema 5), the global `position`, the stored `record` (the very bytes LMDB
  stores: a MessagePack envelope holding both hash links) and its `hash`, or, left to the
  sealer, the encoded `event`, which the sealer replaces by `position`, `record` and `hash`.
- `sessions`: the session index (the folded SessionInfo, its `last_position` filled in on
  reading), updated in the append's transaction; since schema 7 with the `position` of the
  session's last record when its batch was sealed inline (else NULL, looked up), so that a
  listing rarely needs the events table.
- `seal`: one row, the sealed head (last position and its hash) and the transaction horizon
  sealed so far; the sealer's lock.
- `leases` (since schema 2): a session's lease record (`leases.py`): its fencing `epoch`, its
  holder's `host`, `pid`, `started_at` and `token` (all NULL once released) and `expires_at`
  (server clock, epoch seconds); rows are never deleted, so an epoch is never reused. Schema 3
  replaced schema 2's `owner` name and timestamptz expiry: an old holder keeps its lease until
  it expires, as the owner `host=<name>, pid=0`.
- `append_batch(...)` (since schema 4): a writer's whole batch in one call, hence one round
  trip and, in autocommit, one transaction (see `writer.py`): it takes the sessions' advisory
  locks in the order given, checks that every session's stored version, and every fenced
  session's lease, are what the writer assumed, and only then inserts the events, upserts
  the index entries and stores the released leases; it returns whether the assumptions held
  (else it writes nothing) and the transaction's id. It decides nothing itself: the writer
  decided each append with the port's rules on the state it assumed.
- `append_batch_sealed(...)` (since schema 5): `append_batch`, plus the batch's records as the
  writer computed them for the head it assumes; stored sealed when that head, the sessions'
  last hashes and "nothing waits for the sealer" hold under the seal row's lock, which it
  never waits for; else stored unsealed as `append_batch` does. One NOTIFY per sealed batch.
  Since schema 6 the same function in four statements instead of eight (the seal row's lock
  and the checks for sealing in one, the writes of either branch in one): each statement a
  PL/pgSQL function runs costs an executor start and end, measured here as the largest part
  of a small batch's server time.
  `append_batch` stayed for nodes of the previous release until they restarted; schema 7
  drops it. Since schema 7 a sealed batch writes its index entries' positions.
- `seal_store(...)` (since schema 4): a seal's writes in one call (see `sealer.py`): under the
  `seal` row's lock, only if the head is still the one the seal was computed from, the rows'
  positions, hashes and records, the new head and one NOTIFY; commits asynchronously. Since
  schema 5 it plans its row updates as one primary-key probe per row.
- `schema_version`: one row, the version of this layout.

A database holding a newer layout is refused; older ones are migrated in order, under an
advisory lock so that nodes starting together migrate once. This module only runs DDL.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import psycopg

from ...errors import LedgerError
from ..hashing import GENESIS

SCHEMA_VERSION = 7
"""The layout this release writes and reads."""

MIGRATION_LOCK = 0x6368_6C67  # "chlg": serialises migrations between nodes
SESSION_LOCK_CLASS = 0x6368_6C73  # "chls": the first key of per-session advisory locks
SEAL_CHANNEL = "chatledger_sealed"



@functools.lru_cache(maxsize=16384)
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

# The end of the batch functions: the released leases and the answer, after the index
# entries in schemas 4 and 5 (schema 6 writes those with the events).
_LEASES_AND_END = """\
    IF cardinality(lease_sessions) > 0 THEN
        INSERT INTO chatledger.leases (session_id, epoch, host, pid, started_at, token,
                                       expires_at)
            SELECT * FROM unnest(lease_sessions, lease_epochs, lease_hosts, lease_pids,
                                 lease_started_ats, lease_tokens, lease_expiries)
            ON CONFLICT (session_id) DO UPDATE SET epoch = excluded.epoch,
                host = excluded.host, pid = excluded.pid, started_at = excluded.started_at,
                token = excluded.token, expires_at = excluded.expires_at;
    END IF;
    assumed := true;
    txid := pg_current_xact_id_if_assigned()::text;
END
$function$;
"""
_INDEX_LEASES_AND_END = """\
    INSERT INTO chatledger.sessions (session_id, version, info)
        SELECT * FROM unnest(index_sessions, index_versions, infos)
        ON CONFLICT (session_id) DO UPDATE SET version = excluded.version, info = excluded.info;
""" + _LEASES_AND_END

# The assumed state is checked after the locks, each statement of a volatile function taking a
# new snapshot (READ COMMITTED): it sees every append committed before the locks were ours.
# The transaction gets its id at the first insert, after the locks (see the sealer's order).
_V4 = f"""
CREATE OR REPLACE FUNCTION chatledger.append_batch(
    lock_keys int4[], sessions text[], base_versions int8[],
    fenced text[], epochs int8[], hosts text[], pids int8[], started_ats float8[],
    tokens text[],
    event_sessions text[], event_versions int8[], recorded_ats timestamptz[],
    schema_versions int4[], events bytea[],
    index_sessions text[], index_versions int8[], infos bytea[],
    lease_sessions text[], lease_epochs int8[], lease_hosts text[], lease_pids int8[],
    lease_started_ats float8[], lease_tokens text[], lease_expiries float8[],
    OUT assumed boolean, OUT txid text)
LANGUAGE plpgsql AS $function$
BEGIN
    PERFORM pg_advisory_xact_lock({SESSION_LOCK_CLASS}, key) FROM unnest(lock_keys) AS key;
    IF EXISTS (
        SELECT 1 FROM unnest(sessions, base_versions) AS a(session_id, base_version)
        LEFT JOIN chatledger.sessions s ON s.session_id = a.session_id
        WHERE coalesce(s.version, 0) <> a.base_version
    ) OR EXISTS (
        SELECT 1 FROM unnest(fenced, epochs, hosts, pids, started_ats, tokens)
            AS f(session_id, epoch, host, pid, started_at, token)
        LEFT JOIN chatledger.leases l ON l.session_id = f.session_id
        WHERE l.session_id IS NULL OR l.epoch <> f.epoch
            OR l.host IS DISTINCT FROM f.host OR l.pid IS DISTINCT FROM f.pid
            OR l.started_at IS DISTINCT FROM f.started_at OR l.token IS DISTINCT FROM f.token
    ) THEN
        assumed := false;
        RETURN;
    END IF;
    INSERT INTO chatledger.events (session_id, version, recorded_at, schema_version, event)
        SELECT * FROM unnest(event_sessions, event_versions, recorded_ats, schema_versions,
                             events);
{_INDEX_LEASES_AND_END}
CREATE OR REPLACE FUNCTION chatledger.seal_store(
    expected_position int8, head_position int8, head_hash bytea, below xid8,
    sessions text[], versions int8[], positions int8[], hashes bytea[], records bytea[],
    channel text)
RETURNS boolean LANGUAGE plpgsql AS $function$
DECLARE
    current_position int8;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT position INTO current_position FROM chatledger.seal FOR UPDATE;
    IF current_position <> expected_position THEN
        RETURN false;
    END IF;
    UPDATE chatledger.events AS e
        SET position = u.position, hash = u.hash, record = u.record, event = NULL
        FROM unnest(sessions, versions, positions, hashes, records)
            AS u(session_id, version, position, hash, record)
        WHERE e.session_id = u.session_id AND e.version = u.version;
    UPDATE chatledger.seal SET position = head_position, hash = head_hash,
        sealed_below = below, sealed_at = now();
    PERFORM pg_notify(channel, head_position::text);
    RETURN true;
END
$function$;
"""

# The start of append_batch_sealed (schemas 5 and 6): its arguments, its settings, and the
# sessions' locks taken and the assumed state checked under them.
_SEALED_HEAD = """\
CREATE OR REPLACE FUNCTION chatledger.append_batch_sealed(
    lock_keys int4[], sessions text[], base_versions int8[], base_hashes bytea[],
    fenced text[], epochs int8[], hosts text[], pids int8[], started_ats float8[],
    tokens text[],
    event_sessions text[], event_versions int8[], recorded_ats timestamptz[],
    schema_versions int4[], events bytea[],
    index_sessions text[], index_versions int8[], infos bytea[],
    lease_sessions text[], lease_epochs int8[], lease_hosts text[], lease_pids int8[],
    lease_started_ats float8[], lease_tokens text[], lease_expiries float8[],
    head_position int8, head_hash bytea, hashes bytea[], records bytea[], channel text,
    OUT assumed boolean, OUT sealed boolean, OUT txid text)
LANGUAGE plpgsql SET enable_seqscan = off SET jit = off SET plan_cache_mode = force_generic_plan
AS $function$
"""
_LOCKED_AND_ASSUMED = f"""\
    sealed := false;
    PERFORM pg_advisory_xact_lock({SESSION_LOCK_CLASS}, key) FROM unnest(lock_keys) AS key;
    IF EXISTS (
        SELECT 1 FROM unnest(sessions, base_versions) AS a(session_id, base_version)
        WHERE a.base_version <> coalesce((SELECT s.version FROM chatledger.sessions s
                                          WHERE s.session_id = a.session_id), 0)
    ) OR EXISTS (
        SELECT 1 FROM unnest(fenced, epochs, hosts, pids, started_ats, tokens)
            AS f(session_id, epoch, host, pid, started_at, token)
        WHERE NOT EXISTS (
            SELECT 1 FROM chatledger.leases l WHERE l.session_id = f.session_id
                AND l.epoch = f.epoch AND l.host IS NOT DISTINCT FROM f.host
                AND l.pid IS NOT DISTINCT FROM f.pid
                AND l.started_at IS NOT DISTINCT FROM f.started_at
                AND l.token IS NOT DISTINCT FROM f.token)
    ) THEN
        assumed := false;
        RETURN;
    END IF;
"""

# What else sealing a batch in its own transaction needs (schemas 5-7), besides the head it
# assumed: nothing waits for the sealer, and each session's last record is the one assumed.
_SEALABLE = """\
            AND NOT EXISTS (SELECT 1 FROM chatledger.events WHERE position IS NULL)
            AND NOT EXISTS (
                SELECT 1 FROM unnest(sessions, base_versions, base_hashes)
                    AS a(session_id, base_version, base_hash)
                WHERE a.base_version > 0 AND a.base_hash IS NOT NULL
                    AND a.base_hash IS DISTINCT FROM (
                    SELECT e.hash FROM chatledger.events e
                    WHERE e.session_id = a.session_id AND e.version = a.base_version))
"""

# Schema 4's append_batch, and the seal in the same transaction when it can be made there: the
# writer computed each record for the head it assumes (see `writer.py`). The seal row is taken
# with SKIP LOCKED, so an append never waits for a seal (another node's, the sealer's or an
# import's): when the row is taken, the head is not the assumed one, any committed row still
# waits for the sealer, or a session's last record is not the assumed one, the events are
# stored unsealed, exactly as append_batch stores them, and the sealer places them. (The writer
# sends a last hash for every session it appends events to, and seals nothing when it does not
# know one; a session in the batch only to let its lease go has none.)
# How it is planned matters (measured with auto_explain and pg_stat_statements):
# - its lookups are correlated subqueries, one primary-key probe per session, planned with
#   sequential scans off: PL/pgSQL keeps a statement's plan for the connection's life, and one
#   made while the tables were tiny (a sequential scan, or a merge join over a whole index)
#   read the whole events table on every call once it had grown;
# - JIT is off: the penalty that keeps sequential scans out made every plan look worth
#   compiling (15-30 ms a statement);
# - plans are generic, made once per connection: left to choose, PostgreSQL planned every
#   statement afresh on every call (505 us of server time per one-event call, 217 us now).
_V5 = f"""
{_SEALED_HEAD}DECLARE
    current_position int8;
    current_hash bytea;
BEGIN
{_LOCKED_AND_ASSUMED}    IF head_position IS NOT NULL AND cardinality(event_sessions) > 0 THEN
        SELECT position, hash INTO current_position, current_hash
            FROM chatledger.seal FOR UPDATE SKIP LOCKED;
        sealed := FOUND AND current_position = head_position AND current_hash = head_hash
{_SEALABLE.rstrip()};
    END IF;
    IF sealed THEN
        INSERT INTO chatledger.events (session_id, version, recorded_at, schema_version,
                                       position, hash, record)
            SELECT u.session_id, u.version, u.recorded_at, u.schema_version,
                   head_position + u.number, u.hash, u.record
            FROM unnest(event_sessions, event_versions, recorded_ats, schema_versions, hashes,
                        records) WITH ORDINALITY
                AS u(session_id, version, recorded_at, schema_version, hash, record, number)
            ORDER BY u.number;
        UPDATE chatledger.seal SET position = head_position + cardinality(event_sessions),
            hash = hashes[cardinality(hashes)], sealed_at = now();
        PERFORM pg_notify(channel, (head_position + cardinality(event_sessions))::text);
    ELSE
        INSERT INTO chatledger.events (session_id, version, recorded_at, schema_version, event)
            SELECT u.session_id, u.version, u.recorded_at, u.schema_version, u.event
            FROM unnest(event_sessions, event_versions, recorded_ats, schema_versions, events)
                WITH ORDINALITY AS u(session_id, version, recorded_at, schema_version, event,
                                     number)
            ORDER BY u.number;
    END IF;
{_INDEX_LEASES_AND_END}"""

# The sealer's writes were planned the same way (their cached plan joined the batch to a whole
# scan of the events table): a probe per row, whatever the table's size.
_V5 += """
ALTER FUNCTION chatledger.seal_store(int8, int8, bytea, xid8, text[], int8[], int8[], bytea[],
                                     bytea[], text)
    SET enable_seqscan = off SET enable_mergejoin = off SET enable_hashjoin = off
    SET jit = off SET plan_cache_mode = force_generic_plan;
"""

# The same function with fewer statements (see the module docstring): the seal row taken with
# the checks for sealing in one statement (its subqueries see every row committed before the
# sessions' locks were ours, which is what the checks need), and each branch's writes in one
# statement of data-modifying WITH queries. Same arguments, same answers.
def _sealed_batch_function(seal_check: str, sealed_index: str, unsealed_index: str) -> str:
    """append_batch_sealed in four statements (schemas 6 and 7): with its statement taking the
    seal row and deciding `sealed`, and each branch's write of the index entries (the last
    query of the sealed branch's WITH, the unsealed branch's statement after its events)."""
    return f"""
{_SEALED_HEAD}BEGIN
{_LOCKED_AND_ASSUMED}    IF head_position IS NOT NULL AND cardinality(event_sessions) > 0 THEN
{seal_check}        sealed := coalesce(sealed, false);
    END IF;
    IF sealed THEN
        WITH stored AS (
            INSERT INTO chatledger.events (session_id, version, recorded_at, schema_version,
                                           position, hash, record)
                SELECT u.session_id, u.version, u.recorded_at, u.schema_version,
                       head_position + u.number, u.hash, u.record
                FROM unnest(event_sessions, event_versions, recorded_ats, schema_versions,
                            hashes, records) WITH ORDINALITY
                    AS u(session_id, version, recorded_at, schema_version, hash, record, number)
                ORDER BY u.number
        ), moved AS (
            UPDATE chatledger.seal SET position = head_position + cardinality(event_sessions),
                hash = hashes[cardinality(hashes)], sealed_at = now()
{sealed_index}        SELECT true FROM pg_notify(channel, (head_position + cardinality(event_sessions))::text)
            INTO sealed;
    ELSE
        WITH stored AS (
            INSERT INTO chatledger.events (session_id, version, recorded_at, schema_version,
                                           event)
                SELECT u.session_id, u.version, u.recorded_at, u.schema_version, u.event
                FROM unnest(event_sessions, event_versions, recorded_ats, schema_versions,
                            events) WITH ORDINALITY
                    AS u(session_id, version, recorded_at, schema_version, event, number)
                ORDER BY u.number
        )
{unsealed_index}    END IF;
{_LEASES_AND_END}"""



_V6 = _sealed_batch_function(
    seal_check="""\
        SELECT s.position = head_position AND s.hash = head_hash
""" + _SEALABLE + """\
            INTO sealed
            FROM chatledger.seal s FOR UPDATE SKIP LOCKED;
""",
    sealed_index="""\
        ), indexed AS (
            INSERT INTO chatledger.sessions (session_id, version, info)
                SELECT * FROM unnest(index_sessions, index_versions, infos)
                ON CONFLICT (session_id) DO UPDATE SET version = excluded.version,
                    info = excluded.info
        )
""",
    unsealed_index="""\
        INSERT INTO chatledger.sessions (session_id, version, info)
            SELECT * FROM unnest(index_sessions, index_versions, infos)
            ON CONFLICT (session_id) DO UPDATE SET version = excluded.version,
                info = excluded.info;
""")

# Schema 7: an index entry written by a batch sealed inline holds the position of the session's
# last record, so that listing the sessions reads the index and looks up only the entries
# without one (it joined every entry to its event: a whole scan of the events table, as slow as
# the log is long). NULL when the record was left to the sealer, which does not write the index
# (its updates would wait for appenders' row locks and make them wait for its own, measured:
# sealer-placed appends at a third of the rate). The seal row is taken only when the batch
# seals (its checks in the WHERE clause: a row that fails them is not locked; the head is
# checked again on the row's latest version as it is locked): schema 6 took it for every batch
# and held it to the commit, so with two nodes the sealers waited ~10 ms for it. A batch that
# was to seal and cannot writes nothing and answers "not assumed": the writer then seals it in
# a transaction that waits for the seal row (`writer.py`), instead of leaving rows to the
# sealer, which stopped every node's inline seals until it came by. `append_batch`
# is gone: no release since schema 5 calls it, and it would leave a stale position behind.
_V7 = """
ALTER TABLE chatledger.sessions ADD COLUMN IF NOT EXISTS position bigint;
UPDATE chatledger.sessions s SET position = e.position FROM chatledger.events e
    WHERE e.session_id = s.session_id AND e.version = s.version;
DROP FUNCTION IF EXISTS chatledger.append_batch(
    int4[], text[], int8[], text[], int8[], text[], int8[], float8[], text[], text[], int8[],
    timestamptz[], int4[], bytea[], text[], int8[], bytea[], text[], int8[], text[], int8[],
    float8[], text[], float8[]);
""" + _sealed_batch_function(
    seal_check="""\
        SELECT true INTO sealed FROM chatledger.seal s
            WHERE s.position = head_position AND s.hash = head_hash
""" + _SEALABLE + """\
            FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN  -- the writer seals it under the seal row's lock instead
            assumed := false;
            RETURN;
        END IF;
""",
    sealed_index="""\
        ), indexed AS (
            INSERT INTO chatledger.sessions (session_id, version, info, position)
                SELECT i.session_id, i.version, i.info, head_position + u.number
                FROM unnest(index_sessions, index_versions, infos) AS i(session_id, version, info)
                LEFT JOIN unnest(event_sessions, event_versions) WITH ORDINALITY
                    AS u(session_id, version, number)
                    ON u.session_id = i.session_id AND u.version = i.version
                ON CONFLICT (session_id) DO UPDATE SET version = excluded.version,
                    info = excluded.info, position = excluded.position
        )
""",
    unsealed_index="""\
        INSERT INTO chatledger.sessions (session_id, version, info)
            SELECT * FROM unnest(index_sessions, index_versions, infos)
            ON CONFLICT (session_id) DO UPDATE SET version = excluded.version,
                info = excluded.info, position = NULL;
""")

MIGRATIONS: dict[int, str] = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5, 6: _V6, 7: _V7}
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
