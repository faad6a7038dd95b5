"""The state every part of a SessionActor shares, and how it records events.

`SessionCore` holds a live session's folded info, its conversation tail, its queue of turns
and its lease, and the one way it appends (`_record`: decide on the state as it is, append at
the known version, decide again on fresh state when another process wrote first). The
actor's other parts build on it: `session_ownership.py` (the lease across processes),
`session_turns.py` (starting and finishing turns) and `session.py` (lifecycle, dispatch,
commands). Everything here runs in the actor's own thread.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import pykka

from ..agent import AgentDialect
from ..config import Config
from ..errors import (
    ConcurrencyError,
)
from ..events import (
    Event,
    HistoryMessage,
    Recorded,
    RunStarted,
    SessionInfo,
    conversation,
    evolve,
)
from ..storage import EventStore, Lease, LeaseRequest
from ..telemetry import TrackedQueue, session_logger
from .checks import check_mode, check_open, check_turn_allowed
from .messages import (
    RunCompleted,
    RunTicket,
    SendMessage,
)
from .ownership import LeaseKeeper
from .permissions import PermissionDesk
from .preflight import check_power_mode_runs
from .rehydration import load_recent, mode_before
from .runs import RunPool
from .transcripts import Transcripts
from .updates import AnyTurnUpdate, TurnSink
from .warm import WarmPool

logger = logging.getLogger(__name__)

APPEND_RETRY_SECONDS = 30.0
"""How long an actor goes on deciding again a command another process keeps racing (each
retry reloads the session; from the second on it backs off up to MAX_BACKOFF, jittered)."""
MAX_BACKOFF = 0.05
LEASE_POLL = 0.1
"""Seconds between looks at a lease another process holds, while turns wait for it."""
RECORDING_RETRY = (0.5, 30.0)
"""First and longest delay between attempts to close a turn whose outcome was not written."""

T = TypeVar("T")


@dataclass
class SessionServices:
    """What every session actor of a runtime shares: config, log, pool, MCP files, routing."""

    config: Config
    dialect: AgentDialect
    log: EventStore
    pool: RunPool
    route_completion: Callable[[RunCompleted], None]
    mcp_config_path: Callable[[str, str], str | None]
    touch: Callable[[str, bool], None]
    forget: Callable[[str, Any], None]
    remove_session_files: Callable[[str], None]
    closing: threading.Event
    leases: LeaseKeeper
    transcripts: Transcripts | None = None
    warm: WarmPool | None = None
    permissions: PermissionDesk | None = None


def emit_all(sink: TurnSink, updates: Iterable[AnyTurnUpdate]) -> None:
    """Hand updates to a caller's sink, in order; a broken consumer must not break the turn."""
    for update in updates:
        try:
            sink(update)
        except Exception:  # the consumer's problem: record it and go on
            logger.exception("a turn sink raised; the update was dropped")



class SessionCore(pykka.ThreadingActor):
    """A live session's state and its appends (the base of SessionActor)."""

    def __init__(
        self, session_id: str, services: SessionServices, adopt: RunTicket | None = None
    ) -> None:
        super().__init__()
        self.session_id = session_id
        self.services = services
        self.adopt = adopt
        # A live session keeps only what its next turn needs, never its whole stream: the
        # folded info, the last `history_window` conversation messages (all a prompt uses)
        # and its last RunStarted. A backend holds thousands of live sessions; full records
        # cost tens of KiB each. Readers of the full history read the log.
        self.recent: collections.deque[HistoryMessage] = collections.deque(
            maxlen=max(services.config.history_window, 0)
        )
        self.last_run_started: RunStarted | None = None
        self.info = SessionInfo(session_id=session_id)
        self.queue: collections.deque[SendMessage] = TrackedQueue()
        self.current: RunTicket | None = None
        self.log = session_logger(
            logger, session_id,
            lambda: self.current.turn if self.current else self.info.open_turn)
        self.lease: Lease | None = services.leases.held(session_id)
        # The grant in reach while the next turn starts, taken with its first append
        # (`SessionOwnership._own_session_for_turn`); None otherwise.
        self.lease_to_take: LeaseRequest | None = None
        self.told_waiting: set[int] = set()  # tickets whose caller heard TurnWaiting
        self.retries_pending: set[type] = set()
        self.unrecorded: tuple[int, str] | None = None  # (turn, why) of an unwritten outcome
        self.recording_delay = RECORDING_RETRY[0]


    def _reload(self) -> None:
        """Come back to the session as it is in the log: its indexed info and a tail."""
        info, tail = load_recent(self.services.log, self.session_id,
                                 self.recent.maxlen or 0)
        self.info = info
        self.recent.clear()
        self.last_run_started = None
        self._remember(tail)

    def _remember(self, records: list[Recorded]) -> None:
        """Keep the conversation tail and the last RunStarted of records just folded into
        the info."""
        if self.recent.maxlen:
            before = mode_before(records, self.info.mode)
            self.recent.extend(conversation(records, before)[-self.recent.maxlen:])
        for recorded in reversed(records):
            if isinstance(recorded.event, RunStarted):
                self.last_run_started = recorded.event
                break


    # -- commands ---------------------------------------------------------------------------

    def _record(
        self, decide: Callable[[], tuple[list[Event], T]], lease: Lease | None = None,
        release_lease: bool = False,
    ) -> T:
        """Decide events from the session's state and append them at its known version
        (fenced by `lease` when given); returns what the successful decision returned with
        them. On a conflict (another process wrote to this session) reload the stream and
        decide again, backing off a little from the second retry, for up to
        APPEND_RETRY_SECONDS: `decide` raises if the command no longer applies, so nothing
        is recorded twice or from a stale state. Appending is a short, blocking call: the
        writer batches it with others."""
        deadline = time.monotonic() + APPEND_RETRY_SECONDS
        backoff = 0.0
        while True:
            batch, result = decide()
            if not batch:
                return result
            try:
                recorded = (
                    self.services.log.append(self.session_id, batch, self.info.version)
                    if lease is None else
                    self.services.log.append(self.session_id, batch, self.info.version,
                                             lease=lease, release_lease=release_lease)
                )
            except ConcurrencyError:
                if time.monotonic() > deadline:
                    raise
                if backoff:
                    time.sleep(random.uniform(0, backoff))
                backoff = min(max(backoff * 2, 0.001), MAX_BACKOFF)
                self._reload()
                continue
            self._fold(recorded)
            return result

    def _fold(self, recorded: list[Recorded]) -> None:
        """Fold records just appended into the session's state."""
        for item in recorded:
            self.info = evolve(self.info, item)
        self._remember(recorded)

    def _append(
        self, events: list[Event] | Callable[[], list[Event]], lease: Lease | None = None,
        release_lease: bool = False,
    ) -> bool:
        """Append `events` (or the events a function decides, as `_record` does); whether
        anything was appended."""
        decide = events if callable(events) else (lambda: events)

        def decided() -> tuple[list[Event], bool]:
            batch = decide()
            return batch, bool(batch)

        return self._record(decided, lease, release_lease)

    def _require_open(self) -> None:
        check_open(self.info)

    def _check_mode_allowed(self) -> None:
        check_turn_allowed(self.info, allow_power_mode=self.services.config.allow_power_mode)

    def _check_mode(self, mode: str) -> None:
        check_mode(mode, allow_power_mode=self.services.config.allow_power_mode)
        if mode == "power":
            check_power_mode_runs(self.services.config)


    # -- defined by the actor's other parts -------------------------------------------------

    def _start_next_turn(self) -> None:
        """Start queued turns until one is running (session_turns.py)."""
        raise NotImplementedError

    def _fail_queue(self, reason: str) -> None:
        """Fail every queued turn with `reason` (session.py)."""
        raise NotImplementedError
