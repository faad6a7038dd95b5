"""Verbatim appends on PostgreSQL (a faithful import, a copy): stored records written as they
are, already sealed (same positions, links and hashes), in one transaction.

The store-agnostic `storage/verbatim.py plan_verbatim` decides what to write; this module only
takes the locks it needs and writes the plan: the touched sessions' advisory locks first (in
key order, as appends take them, so no append to those sessions runs alongside), then the
seal row (the sealer's lock: positions are handed out under it), then the rows, the index
entries and the new sealed head, with one NOTIFY for other nodes' subscriptions. A touched
session whose records are not all sealed yet cannot be linked to: the caller seals and tries
again. This module must not be used for ordinary appends (they go through `writer.py`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors as pg_errors

from ...events.codec import decode_record
from ...events.model import Recorded
from ..hashing import HASH_SIZE, Head
from ..records import IndexEntry
from ..verbatim import plan_verbatim
from .records import decode_info, encode_info
from .schema import SEAL_CHANNEL, SESSION_LOCK_CLASS, session_lock_key


class UnsealedSessionError(Exception):
    """A touched session has records not sealed yet: seal, then try again."""


_LOCK_SESSIONS = "SELECT pg_advisory_xact_lock(%s, key) FROM unnest(%s::int4[]) AS key"
_LOCK_HEAD = "SELECT position, hash FROM chatledger.seal FOR UPDATE"
_UNSEALED = ("SELECT EXISTS (SELECT 1 FROM chatledger.events"
             " WHERE session_id = ANY(%s) AND position IS NULL)")
_ENTRIES = (
    "SELECT s.session_id, s.info, e.position, e.hash FROM chatledger.sessions s"
    " LEFT JOIN chatledger.events e ON e.session_id = s.session_id AND e.version = s.version"
    " WHERE s.session_id = ANY(%s)"
)
# Sealed rows, their index entries and the new head in one statement (also the writer's, for a
# batch it seals under the seal row's lock).
SEALED_WRITE = (
    "WITH events AS (INSERT INTO chatledger.events"
    "  (session_id, version, recorded_at, schema_version, position, hash, record)"
    "  SELECT * FROM unnest(%s::text[], %s::int8[], %s::timestamptz[], %s::int4[],"
    "   %s::int8[], %s::bytea[], %s::bytea[])),"
    " sessions AS (INSERT INTO chatledger.sessions (session_id, version, info, position)"
    "  SELECT * FROM unnest(%s::text[], %s::int8[], %s::bytea[], %s::int8[])"
    "  ON CONFLICT (session_id) DO UPDATE SET version = excluded.version, info = excluded.info,"
    "   position = excluded.position),"
    " head AS (UPDATE chatledger.seal SET position = %s, hash = %s, sealed_at = now())"
    " SELECT pg_notify(%s, %s)"
)


def write_verbatim(connection: psycopg.Connection[Any], records: list[bytes]) -> Head:
    """Append `records` (stored record bytes, without their hashes) as they are, in one
    transaction; raises what `plan_verbatim` returns (LogMovedError, ValueError), or
    UnsealedSessionError. Commits on success, rolls back otherwise."""
    decoded = [decode_record(record) for record in records]
    session_ids = sorted({recorded.session_id for recorded in decoded})
    try:
        connection.execute(_LOCK_SESSIONS, [SESSION_LOCK_CLASS, sorted(
            {session_lock_key(session_id) for session_id in session_ids})])
        head_row = connection.execute(_LOCK_HEAD).fetchone()
        assert head_row is not None, "the seal row is missing: the schema was damaged"
        unsealed = connection.execute(_UNSEALED, [session_ids]).fetchone()
        if unsealed is not None and unsealed[0]:
            raise UnsealedSessionError(", ".join(session_ids))
        entries = _index_entries(connection, session_ids)
        plan = plan_verbatim(Head(int(head_row[0]), bytes(head_row[1])), records, decoded,
                             entries.get)
        if isinstance(plan, Exception):
            raise plan
        connection.execute(SEALED_WRITE, [
            *_event_columns(plan.values), *_index_columns(plan.entries), plan.head.position,
            plan.head.hash, SEAL_CHANNEL, str(plan.head.position)])
        connection.commit()
        return plan.head
    except pg_errors.UniqueViolation:
        connection.rollback()
        raise ValueError("a record's (session, version) is already in the ledger, although the "
                         "session index says it is free: run `chatledger rebuild`") from None
    except BaseException:
        if not connection.closed:
            connection.rollback()
        raise


def _index_entries(connection: psycopg.Connection[Any], session_ids: list[str]
                   ) -> dict[str, IndexEntry]:
    rows = connection.execute(_ENTRIES, [session_ids], binary=True).fetchall()
    return {session_id: IndexEntry(info=decode_info(bytes(info), position),
                                   last_hash=bytes(digest))
            for session_id, info, position, digest in rows if digest is not None}


def _event_columns(values: list[tuple[Recorded, bytes]]) -> tuple[list[Any], ...]:
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
    for recorded, stored in values:
        for column, value in zip(columns, (
                recorded.session_id, recorded.version, recorded.recorded_at,
                recorded.schema_version, recorded.position, stored[:HASH_SIZE], stored[HASH_SIZE:]),
                strict=True):
            column.append(value)
    return columns


def _index_columns(entries: dict[str, IndexEntry]) -> tuple[list[Any], ...]:
    columns: tuple[list[Any], ...] = ([], [], [], [])
    for session_id, entry in entries.items():
        columns[0].append(session_id)
        columns[1].append(entry.info.version)
        columns[2].append(encode_info(entry.info))
        columns[3].append(entry.info.last_position)  # verbatim records are sealed
    return columns
