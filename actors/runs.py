"""The run pool: a bounded, FIFO pool of worker threads on which agent runs happen.

Every session shares it, so at most `max_runs` agent processes are alive at once. A run
reports its outcome with a callback (which tells an actor: nothing here waits on an actor).
Queued runs can be cancelled before they start; running ones through their cancel switch,
which the agent runner turns into SIGINT, SIGTERM, SIGKILL of the process tree. Its threads
are daemons, started as runs need them: a program that never closes chatledger still exits
(the runtime's exit hook cancels what runs first, so those turns are recorded).
"""

from __future__ import annotations

import logging
import queue
import subprocess
import threading
import time
from collections.abc import Callable

from ..agent import CancelSwitch, RunOutcome
from .messages import RunTicket

logger = logging.getLogger(__name__)

RunFunction = Callable[[CancelSwitch], RunOutcome]
"""Runs one agent turn on a pool thread, watching the cancel switch it is given."""

SPAWN_ERRORS = (OSError, ValueError, subprocess.SubprocessError)
"""What starting an agent can raise past the runner (which turns the usual ones into an
outcome itself): the system refusing a process or pipe, or a bad argument."""


def cancelled_outcome(message: str = "Run cancelled before it started") -> RunOutcome:
    """The outcome of a run that was cancelled while it still waited for a slot."""
    return RunOutcome(ok=False, failure_reason="cancelled", message=message)


class RunPool:
    """Runs agent turns on at most `max_runs` threads, first come, first served."""

    def __init__(self, max_runs: int) -> None:
        self.max_runs = max_runs
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pending = 0  # runs queued or running
        self._lock = threading.Lock()
        self._tickets: dict[tuple[str, int], RunTicket] = {}
        self._closed = False
        self.on_submit: Callable[[], None] | None = None
        """Called (on the submitting thread) after each run is queued: a watcher's wake-up."""

    def submit(
        self,
        ticket: RunTicket,
        run: RunFunction,
        on_done: Callable[[RunTicket, RunOutcome], None],
    ) -> None:
        """Queue a run; `on_done(ticket, outcome)` is called on the pool thread when it ends."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the run pool is shut down")
            self._tickets[(ticket.session_id, ticket.ticket)] = ticket
            self._pending += 1
            if self._pending > len(self._threads) and len(self._threads) < self.max_runs:
                thread = threading.Thread(target=self._work_loop, daemon=True,
                                          name=f"chatledger-run_{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
        self._work.put((ticket, run, on_done))
        if self.on_submit is not None:
            self.on_submit()

    def _work_loop(self) -> None:
        """Take runs off the queue, first come first served, until shutdown. Pool thread."""
        while True:
            work = self._work.get()
            if work is None:
                return
            try:
                self._execute(*work)
            except Exception:  # a broken completion callback must not take the thread down
                logger.exception("reporting a run's end failed")
            finally:
                with self._lock:
                    self._pending -= 1

    def _execute(
        self,
        ticket: RunTicket,
        run: RunFunction,
        on_done: Callable[[RunTicket, RunOutcome], None],
    ) -> None:
        """Run one turn. Runs on a pool thread."""
        if ticket.cancel.is_set():
            outcome = cancelled_outcome()
        else:
            try:
                outcome = run(ticket.cancel)
            except SPAWN_ERRORS as error:
                outcome = RunOutcome(
                    ok=False,
                    failure_reason="spawn_failed",
                    message=f"chatledger could not start the agent: {type(error).__name__}: "
                            f"{error}",
                )
            except Exception as error:  # a bug in chatledger must still end the turn
                logger.exception("a run of session %s failed inside chatledger",
                                 ticket.session_id)
                outcome = RunOutcome(
                    ok=False,
                    failure_reason="internal_error",
                    message=f"chatledger failed while running the agent: "
                            f"{type(error).__name__}: {error}",
                )
        with self._lock:
            self._tickets.pop((ticket.session_id, ticket.ticket), None)
        on_done(ticket, outcome)

    def in_flight(self, session_id: str) -> list[RunTicket]:
        """The session's runs that are queued or running in this process."""
        with self._lock:
            return [t for (sid, _), t in self._tickets.items() if sid == session_id]

    def all_in_flight(self) -> list[RunTicket]:
        """Every run queued or running in this process."""
        with self._lock:
            return list(self._tickets.values())

    def cancel_all(self) -> int:
        """Flip every cancel switch (shutdown); returns how many runs were cancelled."""
        with self._lock:
            tickets = list(self._tickets.values())
        for ticket in tickets:
            ticket.cancel.set()
        return len(tickets)

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> bool:
        """Refuse new runs; with `wait`, block until every queued run has reported (at most
        `timeout` seconds in all); whether every pool thread has ended."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)
        if not wait:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)


_Work = tuple[RunTicket, RunFunction, Callable[[RunTicket, RunOutcome], None]]
