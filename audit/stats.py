"""Ledger statistics: sessions by status, events, turns, failures by reason, cost, size, activity.

Session figures come from the session index (chatledger's own reserved streams left out:
they are not sessions); failures by reason need one pass over the log
(its progress can be reported).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime

import msgspec

from ..events.model import RunFailed
from ..events.system import is_reserved
from ..storage import AuditStore


class LedgerStats(msgspec.Struct, kw_only=True):
    """A ledger at a glance."""

    path: str
    sessions: int
    sessions_by_status: dict[str, int]
    sessions_by_mode: dict[str, int]
    events: int
    turns: int
    messages: int
    failures: int
    failures_by_reason: dict[str, int]
    total_cost_usd: float
    size_on_disk_bytes: int
    map_size_bytes: int
    head: str
    oldest_activity: datetime | None
    newest_activity: datetime | None


def ledger_stats(log: AuditStore, progress: Callable[[int], None] | None = None) -> LedgerStats:
    """Compute the statistics of a ledger (one pass over the log for failure reasons)."""
    infos = [info for info in log.sessions() if not is_reserved(info.session_id)]
    head = log.head()
    failures: Counter[str] = Counter()
    for recorded in log.read_all(to_position=head.position):
        if isinstance(recorded.event, RunFailed):
            failures[recorded.event.reason] += 1
        if progress is not None:
            progress(1)
    created = [info.created_at for info in infos if info.created_at is not None]
    active = [info.last_active for info in infos if info.last_active is not None]
    return LedgerStats(
        path=log.location,
        sessions=len(infos),
        sessions_by_status=dict(Counter(info.status for info in infos)),
        sessions_by_mode=dict(Counter(info.mode for info in infos)),
        events=head.position,
        turns=sum(info.turn_count for info in infos),
        messages=sum(info.message_count for info in infos),
        failures=sum(failures.values()),
        failures_by_reason=dict(failures.most_common()),
        total_cost_usd=round(sum(info.total_cost_usd for info in infos), 6),
        size_on_disk_bytes=log.disk_size(),
        map_size_bytes=log.map_size(),
        head=str(head),
        oldest_activity=min(created) if created else None,
        newest_activity=max(active) if active else None,
    )
