"""Interrupts across processes: a turn run by one process, stopped at the word of another.

A session's turn runs in the process that holds the session's lease (a backend, usually);
`chatledger interrupt` runs in another. `request_interrupt` records `InterruptRequested` for
the session's open turn at the session's current version, without the lease (like every
command but a turn: on a conflict it reads the session again and decides again), and
`wait_for_end` follows the session until that turn's RunFailed or ResponseReceived. In the
process that runs the turn, an `InterruptWatcher` looks at the sessions whose runs are in
flight there (while runs are in flight: one head read per poll, and one index read per
running session when the log has moved) and stops a turn that was asked to stop through
the runtime's own interrupt. Nothing here asks an actor or starts a process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConcurrencyError
from ..events import InterruptRequested, Recorded, ResponseReceived, RunFailed
from ..storage import EventStore
from .rehydration import HOST

logger = logging.getLogger(__name__)

WATCH_POLL_SECONDS = 0.05
"""How often the owning process looks for interrupt requests while its runs are in flight."""

IDLE_POLL_SECONDS = 1.0
"""How long the watcher sleeps when no run is in flight (a new run wakes it at once)."""

FIRST_LOOK_RECORDS = 64
"""How far back the watcher reads a session's tail the first time it sees one of its runs."""

REQUEST_ATTEMPTS = 20
"""How many times `request_interrupt` decides again when other writers keep going first."""

END_POLL_SECONDS = 0.02
"""How often `wait_for_end` reads the session for the turn's end."""


@dataclass(frozen=True)
class InterruptRequest:
    """What `request_interrupt` did: the turn it asked to stop (None: none was running) and
    the record of the request."""

    turn: int | None
    recorded: Recorded | None = None


def request_interrupt(log: EventStore, session_id: str, requested_by: str) -> InterruptRequest:
    """Record InterruptRequested for the session's running turn; the turn is None (nothing
    recorded) when no turn runs. UnknownSessionError for an unknown session; ConcurrencyError
    if other writers kept going first REQUEST_ATTEMPTS times."""
    conflict: ConcurrencyError | None = None
    for _ in range(REQUEST_ATTEMPTS):
        info = log.require_info(session_id)
        if info.open_turn is None:
            return InterruptRequest(turn=None)
        event = InterruptRequested(turn=info.open_turn, requested_by=requested_by, host=HOST,
                                   pid=os.getpid())
        try:
            recorded = log.append(session_id, [event], info.version)
        except ConcurrencyError as error:
            conflict = error
            continue
        return InterruptRequest(turn=info.open_turn, recorded=recorded[0])
    assert conflict is not None
    raise conflict


def wait_for_end(log: EventStore, session_id: str, turn: int, after_version: int,
                 timeout: float) -> Recorded | None:
    """The record that ended `turn` (RunFailed or ResponseReceived) after `after_version`,
    waiting up to `timeout` seconds for it (None: the turn did not end in time). BLOCKING."""
    deadline = time.monotonic() + timeout
    next_version = after_version + 1
    pause = threading.Event()
    while True:
        for recorded in log.read_session(session_id, from_version=next_version):
            next_version = recorded.version + 1
            event = recorded.event
            if isinstance(event, (RunFailed, ResponseReceived)) and event.turn == turn:
                return recorded
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        pause.wait(min(END_POLL_SECONDS, remaining))


RunsInFlight = Callable[[], list[tuple[str, int, int]]]
"""(session id, turn, the session's version before the turn started or 0 if not known) of
every run in flight in this process."""

StopTurn = Callable[[str, int], object]
"""Stops a session's turn in this process (the runtime's interrupt)."""


class InterruptWatcher:
    """Stops this process's runs that another process asked to interrupt; one daemon thread."""

    def __init__(self, log: EventStore, runs: RunsInFlight, stop: StopTurn,
                 poll: float = WATCH_POLL_SECONDS) -> None:
        self.log = log
        self.runs = runs
        self.stop = stop
        self.poll = poll
        self._seen: dict[tuple[str, int], int] = {}  # (session, turn) -> last version read
        self._head = -1  # the log's head position at the last look
        self._kick = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="chatledger-interrupts",
                                        daemon=True)
        self._thread.start()

    def run_started(self) -> None:
        """A run was queued: wake the watcher if it sleeps (any thread)."""
        self._kick.set()

    def close(self) -> None:
        """Stop watching (returns within one poll)."""
        self._closed.set()
        self._kick.set()
        self._thread.join(5.0)

    def look_once(self) -> int:
        """Look for interrupt requests of the runs in flight now; how many turns it stopped.
        Called on the watcher's thread (tests may call it directly)."""
        since = {(session_id, turn): version for session_id, turn, version in self.runs()}
        for key in list(self._seen):
            if key not in since:
                del self._seen[key]
        if not since:
            return 0
        head = self.log.head().position
        if head == self._head and since.keys() <= self._seen.keys():
            return 0  # nothing was appended anywhere since the last look
        self._head = head
        stopped = 0
        for (session_id, turn), started_after in since.items():
            if self._asked_to_stop(session_id, turn, started_after):
                logger.info("%s: turn %s was asked to stop from another process",
                            session_id, turn)
                self.stop(session_id, turn)
                stopped += 1
        return stopped

    def _asked_to_stop(self, session_id: str, turn: int, started_after: int = 0) -> bool:
        """Whether an InterruptRequested for the turn was recorded since the last look (the
        first look reads from `started_after`, the version before the turn started, when it
        is known: a request names the open turn, so it comes after the turn's start)."""
        key = (session_id, turn)
        seen = self._seen.get(key, started_after or None)
        if seen == -1:
            return False  # already stopped
        info = self.log.info(session_id)
        if info is None or (seen is not None and info.version <= seen):
            if seen is not None:
                self._seen[key] = seen
            return False
        if seen is None:
            records = self.log.latest(session_id, FIRST_LOOK_RECORDS)[1]
        else:
            records = self.log.read_session(session_id, from_version=seen + 1)
        asked = any(isinstance(r.event, InterruptRequested) and r.event.turn == turn
                    for r in records)
        if asked:
            self._seen[key] = -1
        elif records:  # what the index counts but a read does not show yet is read next time
            self._seen[key] = records[-1].version
        return asked

    def _watch(self) -> None:
        while not self._closed.is_set():
            self._kick.clear()  # a run queued from here on wakes the wait below
            try:
                self.look_once()
                busy = bool(self.runs())
            except Exception:  # a closed or damaged ledger: try again later
                logger.warning("looking for interrupt requests failed", exc_info=True)
                busy = False
            self._kick.wait(self.poll if busy else IDLE_POLL_SECONDS)
