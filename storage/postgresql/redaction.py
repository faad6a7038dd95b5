"""Redaction on PostgreSQL: a sealed record's content removed in place, its Redacted event
appended, the session index folded again.

The store-agnostic `storage/redaction.py plan_redaction` decides what to write from the
session's sealed records. The Redacted events go in first, through the ordinary append (so
the writer, the sealer and other nodes treat them like any event); then one transaction,
holding the session's advisory lock (the one appends take), rewrites each record only if it
still holds the bytes planned from (the hash column stays: it does not change), and writes
the session's info folded again over every row. A process that dies between the two steps
leaves Redacted events whose content is still there; `redact` again finishes the job (the
plan then appends no second event). Records not sealed yet are sealed first. This module
does not change the schema and must not be used for ordinary appends.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from ...errors import ConcurrencyError, LedgerError
from ...events.model import Recorded
from ...events.projections import SessionInfo, evolve
from ..hashing import HASH_SIZE
from ..redaction import RedactionPlan, plan_redaction
from .records import encode_info, row_record
from .schema import SESSION_LOCK_CLASS, session_lock_key

if TYPE_CHECKING:
    from .store import PostgresStore

ATTEMPTS = 5
"""Times the plan is made again when the session moved on before its events went in."""

_LOCK = "SELECT pg_advisory_xact_lock(%s, %s)"
_REWRITE = ("UPDATE chatledger.events SET record = %s"
            " WHERE position = %s AND session_id = %s AND record = %s")
_ROWS = ("SELECT session_id, version, recorded_at, schema_version, event, record"
         " FROM chatledger.events WHERE session_id = %s ORDER BY version")
_INFO = "UPDATE chatledger.sessions SET info = %s WHERE session_id = %s"


def redact(store: PostgresStore, run: Callable[[Callable[[psycopg.Connection[Any]], None]], None],
           session_id: str, version: int | None, reason: str,
           redacted_by: str | None) -> list[Recorded]:
    """Redact a version of a session (None: all of it) on `store`, `run` running a function
    on one of its pooled connections; see the module doc."""
    for _ in range(ATTEMPTS):
        store.seal_now()
        info = store.require_info(session_id)
        values = store.read_session_raw(session_id)
        if len(values) < info.version:
            continue  # records of another node not sealed yet: seal and look again
        values = values[:info.version]
        plan = plan_redaction(session_id, values, version, reason=reason,
                              redacted_by=redacted_by)
        try:
            written = store.append(session_id, plan.events, info.version) if plan.events else []
        except ConcurrencyError:
            continue
        run(functools.partial(_remove_content, session_id=session_id, plan=plan,
                              originals=dict(values)))
        return written
    raise LedgerError(f"session {session_id} kept changing while it was being redacted: "
                      "run the command again")


def _remove_content(connection: psycopg.Connection[Any], *, session_id: str,
                    plan: RedactionPlan, originals: dict[int, bytes]) -> None:
    """Rewrite the planned records and fold the session's info again, in one transaction
    under the session's lock; commits. LedgerError (rolled back) if a record changed."""
    connection.execute(_LOCK, [SESSION_LOCK_CLASS, session_lock_key(session_id)])
    for position, value in plan.rewrites:
        original = originals[position]
        changed = connection.execute(_REWRITE, [value[HASH_SIZE:], position, session_id,
                                                original[HASH_SIZE:]]).rowcount
        if changed != 1:
            connection.rollback()
            raise LedgerError(f"the record at position {position} changed while it was being "
                              "redacted: run `chatledger verify`, then redact again")
    rows = connection.execute(_ROWS, [session_id], binary=True).fetchall()
    info = SessionInfo(session_id=session_id)
    for row in rows:
        info = evolve(info, row_record(row[0], row[1], row[2], row[3],
                                       bytes(row[4]) if row[4] is not None else None,
                                       bytes(row[5]) if row[5] is not None else None))
    connection.execute(_INFO, [encode_info(info), session_id])
    connection.commit()
