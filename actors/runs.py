"""The run pool: a bounded, FIFO pool of worker threads on which agent runs happen.

Every session shares it, so at most `max_runs` agent processes are alive at once. A run
reports its outcome with a callback (which tells an actor: nothing here waits on an actor).
Queued runs can be cancelled before they start; running ones through their cancel switch,
which the agent runner turns into SIGINT, SIGTERM, SIGKILL of the process tree.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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
        self._executor = ThreadPoolExecutor(max_workers=max_runs, thread_name_prefix="chatledger-run")
        self._lock = threading.Lock()
        self._tickets: dict[tuple[str, int], RunTicket] = {}
        self._closed = False

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
        self._executor.submit(self._execute, ticket, run, on_done)

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

    def cancel_all(self) -> int:
        """Flip every cancel switch (shutdown); returns how many runs were cancelled."""
        with self._lock:
            tickets = list(self._tickets.values())
        for ticket in tickets:
            ticket.cancel.set()
        return len(tickets)

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new runs; with `wait`, block until every queued run has reported."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=wait)
