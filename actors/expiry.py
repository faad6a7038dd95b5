"""The expiry policy, in one place: when an idle session is closed with `SessionExpired`.

A session expires once it has been idle (no recorded activity) for at least the expiry age
(`expiry_age`, or `chatledger expire --idle`). Never expired: a session the ledger does not
hold, one already expired, one with a turn open (its status is running: this process or
another may be running it) or busy in a live actor, one with no recorded activity, and
chatledger's own reserved streams (`~...`: budgets, checkpoints). The
supervisor's sweep, the session actor (which decides again on its own state) and
`chatledger expire` all ask this function. Pure: no clock, no I/O.
"""

from __future__ import annotations

from ..events import STATUS_EXPIRED, STATUS_RUNNING, SessionInfo
from ..events.system import is_reserved


def expiry_due(
    info: SessionInfo, *, now: float, expiry_age: float, busy: bool = False
) -> float | None:
    """How long the session has been idle if it should expire at `now` (epoch seconds), or
    None if it should not; `busy` says a live actor has a turn queued or running."""
    if busy or info.version == 0 or info.last_active is None or is_reserved(info.session_id):
        return None
    if info.status in (STATUS_EXPIRED, STATUS_RUNNING):
        return None
    idle = now - info.last_active.timestamp()
    if idle < expiry_age:
        return None
    return max(0.0, idle)
