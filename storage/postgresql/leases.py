"""Session ownership between nodes: a lease row per session with a fencing epoch.

A node acquires a session's lease for a time-to-live, measured by the server's clock (one
clock for every node), and renews it while it works; taking a lease over from another owner,
or after it expired, gives a new, larger epoch (rows are never deleted, so an epoch is never
reused). An append that carries a lease commits only if, inside its own transaction, the
lease row still has that owner and epoch and has not expired: a node that was paused or cut
off past its lease can never append for that session again. Leases are changed under the
session's advisory lock, the one appends take, so no takeover can commit between an append's
check and its commit. This module holds the SQL and the values; it does not append.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import psycopg

from ...errors import ChatledgerError
from .schema import SESSION_LOCK_CLASS, session_lock_key


class Lease(msgspec.Struct, frozen=True):
    """A node's ownership of a session until `expires_at` (server time), under an epoch."""

    session_id: str
    owner: str
    epoch: int
    expires_at: datetime


class SessionFencedError(ChatledgerError):
    """The append carried a lease that is no longer the session's: another node owns it (or
    the lease expired); nothing was written. Stop working on the session."""

    def __init__(self, session_id: str, owner: str, epoch: int) -> None:
        super().__init__(
            f"the lease of {owner!r} on session {session_id!r} (epoch {epoch}) is no longer "
            "valid: another node owns the session now, or the lease expired; nothing was "
            "written"
        )
        self.session_id = session_id
        self.owner = owner
        self.epoch = epoch


_LOCK = "SELECT pg_advisory_xact_lock(%s, %s)"
_ACQUIRE = (
    "INSERT INTO chatledger.leases AS l (session_id, owner, epoch, expires_at)"
    " VALUES (%(session)s, %(owner)s, 1, now() + %(ttl)s * interval '1 second')"
    " ON CONFLICT (session_id) DO UPDATE SET"
    "  epoch = CASE WHEN l.owner = excluded.owner AND l.expires_at > now() THEN l.epoch"
    "          ELSE l.epoch + 1 END,"
    "  owner = excluded.owner, expires_at = excluded.expires_at"
    " WHERE l.owner = excluded.owner OR l.expires_at <= now()"
    " RETURNING session_id, owner, epoch, expires_at"
)
_RENEW = (
    "UPDATE chatledger.leases SET expires_at = now() + %(ttl)s * interval '1 second'"
    " WHERE session_id = %(session)s AND owner = %(owner)s AND epoch = %(epoch)s"
    "  AND expires_at > now()"
    " RETURNING session_id, owner, epoch, expires_at"
)
_RELEASE = (
    "UPDATE chatledger.leases SET expires_at = '-infinity'"
    " WHERE session_id = %(session)s AND owner = %(owner)s AND epoch = %(epoch)s"
)
_HOLDER = "SELECT session_id, owner, epoch, expires_at FROM chatledger.leases WHERE session_id = %s"
VALID_LEASES = (
    "SELECT session_id, owner, epoch, expires_at > now() FROM chatledger.leases"
    " WHERE session_id = ANY(%s)"
)
"""What an append's transaction checks its fences against (after the session locks)."""


def _locked(connection: psycopg.Connection[Any], session_id: str) -> None:
    connection.execute(_LOCK, [SESSION_LOCK_CLASS, session_lock_key(session_id)])


def _lease(row: tuple[Any, ...] | None) -> Lease | None:
    return Lease(row[0], row[1], int(row[2]), row[3]) if row is not None else None


def acquire(connection: psycopg.Connection[Any], session_id: str, owner: str, ttl: float
            ) -> Lease | None:
    """Take (or extend our own) lease; None while another owner's lease is valid."""
    with connection.transaction():
        _locked(connection, session_id)
        row = connection.execute(_ACQUIRE, {"session": session_id, "owner": owner,
                                            "ttl": ttl}).fetchone()
    return _lease(row)


def renew(connection: psycopg.Connection[Any], lease: Lease, ttl: float) -> Lease | None:
    """Extend a valid lease; None if it expired or was taken over."""
    with connection.transaction():
        _locked(connection, lease.session_id)
        row = connection.execute(_RENEW, {"session": lease.session_id, "owner": lease.owner,
                                          "epoch": lease.epoch, "ttl": ttl}).fetchone()
    return _lease(row)


def release(connection: psycopg.Connection[Any], lease: Lease) -> None:
    """Give a lease up at once (its epoch stays used)."""
    with connection.transaction():
        _locked(connection, lease.session_id)
        connection.execute(_RELEASE, {"session": lease.session_id, "owner": lease.owner,
                                      "epoch": lease.epoch})


def holder(connection: psycopg.Connection[Any], session_id: str) -> Lease | None:
    """The session's lease row as stored (valid or not), or None if never leased."""
    return _lease(connection.execute(_HOLDER, [session_id]).fetchone())
