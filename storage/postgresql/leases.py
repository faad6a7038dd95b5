"""Session leases in PostgreSQL: one row per session, changed by the port's pure rules.

Each change reads the session's lease row and writes the record `storage/leases.py` decides
(`acquired`, `renewed`, `released`), in one transaction holding the session's advisory lock,
the lock appends take: no grant can commit between an append's fence check and its commit.
Expiry is measured by the server's clock (`clock_timestamp()`, one clock for every node), as
epoch seconds stored exactly as the rules compute them. Rows are never deleted, so an epoch
is never reused. This module holds the SQL and the row mapping; it does not append and has
no rules of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from ..leases import Lease, LeaseOwner, acquired, released, renewed
from .records import lease_columns
from .schema import SESSION_LOCK_CLASS, session_lock_key

_LOCK = "SELECT pg_advisory_xact_lock(%s, %s)"
_CLOCK = "SELECT extract(epoch FROM clock_timestamp())::float8"
_COLUMNS = "session_id, epoch, host, pid, started_at, token, expires_at"
_READ = f"SELECT {_COLUMNS} FROM chatledger.leases WHERE session_id = ANY(%s)"
_WRITE = (
    f"INSERT INTO chatledger.leases ({_COLUMNS})"
    " SELECT * FROM unnest(%s::text[], %s::int8[], %s::text[], %s::int8[], %s::float8[],"
    "  %s::text[], %s::float8[])"
    " ON CONFLICT (session_id) DO UPDATE SET epoch = excluded.epoch, host = excluded.host,"
    "  pid = excluded.pid, started_at = excluded.started_at, token = excluded.token,"
    "  expires_at = excluded.expires_at"
)


def _from_row(row: tuple[Any, ...]) -> Lease:
    session_id, epoch, host, pid, started_at, token, expires_at = row
    owner = (LeaseOwner(host=host, pid=int(pid), started_at=float(started_at), token=token)
             if host is not None else None)
    return Lease(session_id=session_id, epoch=int(epoch), owner=owner,
                 expires_at=float(expires_at))


def clock(connection: psycopg.Connection[Any]) -> float:
    """The server's clock, epoch seconds."""
    row = connection.execute(_CLOCK).fetchone()
    assert row is not None
    return float(row[0])


def read(connection: psycopg.Connection[Any], session_ids: Sequence[str]) -> dict[str, Lease]:
    """The stored lease records of these sessions (those that have one)."""
    rows = connection.execute(_READ, [list(session_ids)]).fetchall()
    return {lease.session_id: lease for lease in map(_from_row, rows)}


def write(connection: psycopg.Connection[Any], records: Sequence[Lease]) -> None:
    """Store these lease records (in the caller's transaction, under the sessions' locks)."""
    if not records:
        return
    connection.execute(_WRITE, lease_columns(records))


def _locked(connection: psycopg.Connection[Any], session_id: str) -> Lease | None:
    connection.execute(_LOCK, [SESSION_LOCK_CLASS, session_lock_key(session_id)])
    return read(connection, [session_id]).get(session_id)


def acquire(connection: psycopg.Connection[Any], session_id: str, owner: LeaseOwner,
            ttl: float, take_over: LeaseOwner | None) -> Lease | None:
    """The lease granted to `owner` (see `acquired`), or None."""
    with connection.transaction():
        current = _locked(connection, session_id)
        granted = acquired(current, session_id, owner, ttl, clock(connection), take_over)
        if granted is not None:
            write(connection, [granted])
    return granted


def renew(connection: psycopg.Connection[Any], lease: Lease, ttl: float) -> Lease | None:
    """The lease extended (see `renewed`), or None if it was lost."""
    with connection.transaction():
        current = _locked(connection, lease.session_id)
        extended = renewed(current, lease, ttl, clock(connection))
        if extended is not None:
            write(connection, [extended])
    return extended


def release(connection: psycopg.Connection[Any], lease: Lease) -> bool:
    """Let the lease go (see `released`); whether it was still ours."""
    with connection.transaction():
        freed = released(_locked(connection, lease.session_id), lease)
        if freed is not None:
            write(connection, [freed])
    return freed is not None
