"""The SessionActor's part that owns its session across processes: the lease.

A turn starts only under the session's lease (`ownership.LeaseKeeper`): the actor takes it
before a turn (reloading the session, so the prompt sees every earlier answer, and closing a
turn its dead owner left open), appends the turn's events fenced by it, and lets it go when
nothing is left to run. While another process holds it, queued turns wait and the actor
looks again every LEASE_POLL seconds. Runs in the actor's own thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import pykka

from ..errors import (
    StaleLeaseError,
)
from ..events import (
    RunFailed,
)
from ..storage import Lease
from .messages import (
    LeaseLost,
    RetryRecording,
    RetryTurns,
)
from .ownership import describe
from .session_core import LEASE_POLL, RECORDING_RETRY, SessionCore, emit_all
from .updates import TurnWaiting, turn_failed

logger = logging.getLogger(__name__)


class SessionOwnership(SessionCore):
    """Takes, fences with, and lets go of the session's lease."""

    # -- ownership across processes (run in the actor's own thread) -------------------------

    def _own_session(self) -> bool:
        """Whether this actor holds the session's lease, taking it if it is free (or its
        holder dead). A fresh grant reloads the session if it was written since this actor
        last looked (another process may have run turns; the index's version says so without
        reading the stream) and closes a turn its previous owner left open. Blocks briefly."""
        if self.lease is not None:
            return True
        lease = self.services.leases.acquire(self.session_id)
        if lease is None:
            return False
        self.lease = lease
        indexed = self.services.log.info(self.session_id)
        if indexed is None or indexed.version != self.info.version:
            self._reload()  # written since this actor last looked: by another process
        self._close_cut_turn()
        return True

    def _close_cut_turn(self) -> None:
        """Close the session's open turn, which nobody runs any more (this actor holds the
        lease and runs nothing): `not_recorded` if it is the turn whose outcome this actor
        could not write, else `interrupted`."""
        turn = self.info.open_turn
        if turn is None or self.current is not None or self.services.pool.in_flight(
            self.session_id
        ):
            return
        reason: Any = "interrupted"
        message = "the process running this turn stopped before the agent answered"
        if self.unrecorded is not None and self.unrecorded[0] == turn:
            reason = "not_recorded"
            message = f"the outcome of this turn could not be recorded: {self.unrecorded[1]}"
        self._append(
            lambda: [RunFailed(turn=turn, reason=reason, message=message)]
            if self.info.open_turn == turn else [],
            lease=self._fence(),
        )
        self.unrecorded = None
        self.recording_delay = RECORDING_RETRY[0]

    def _fence(self) -> Lease:
        """The lease a turn's appends are fenced by; StaleLeaseError if it was lost."""
        if self.lease is None:
            raise StaleLeaseError(self.session_id, 0)
        return self.lease

    def _let_go_if_idle(self) -> None:
        """Let the lease go when nothing is left to run or to record (hand-over at once)."""
        if (self.lease is not None and self.current is None and not self.queue
                and self.unrecorded is None):
            self.lease = None
            self.services.leases.release(self.session_id)

    def _lease_lost(self, message: LeaseLost) -> None:
        """Another process took the session over: stop the run whose outcome can no longer
        be recorded."""
        if self.lease is None or self.lease.epoch != message.epoch:
            return
        self.lease = None
        if self.current is not None:
            logger.warning("%s: another process took the session over; cancelling turn %s",
                           self.session_id, self.current.turn)
            self.current.cancel.set()

    def _wait_for_owner(self) -> None:
        """Queued turns wait for the process that holds the lease: tell each caller once,
        fail those waiting past `turn_wait_timeout`, and look again in LEASE_POLL s."""
        holder = describe(self.services.leases.holder(self.session_id))
        limit = self.services.config.turn_wait_timeout
        now = time.monotonic()
        for command in list(self.queue):
            if limit and now - command.asked_at > limit:
                self.queue.remove(command)
                self.told_waiting.discard(command.ticket)
                emit_all(command.sink, turn_failed(
                    f"session {self.session_id} is busy in {holder}: gave up waiting after "
                    f"{limit:g} s", "session_busy"))
            elif command.ticket not in self.told_waiting:
                self.told_waiting.add(command.ticket)
                emit_all(command.sink, [TurnWaiting(owner=holder)])
        if self.queue:
            self._retry_later(RetryTurns(), LEASE_POLL)
        else:
            self.services.touch(self.session_id, False)

    def _retry_later(self, message: RetryTurns | RetryRecording, delay: float) -> None:
        """Tell this actor `message` in `delay` seconds (once at a time per kind)."""
        if type(message) in self.retries_pending:
            return
        self.retries_pending.add(type(message))
        ref = self.actor_ref

        def tell() -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(message)

        timer = threading.Timer(delay, tell)
        timer.daemon = True
        timer.start()

    def _retry_recording(self) -> None:
        """Try again to close the turn whose outcome could not be written."""
        if self.unrecorded is None:
            return
        if self.lease is None:  # taken over: the new owner closes it
            self.unrecorded = None
            return
        try:
            self._close_cut_turn()
        except Exception as error:
            logger.warning("%s: still cannot close turn %s: %s", self.session_id,
                           self.unrecorded[0], error)
            self.recording_delay = min(self.recording_delay * 2, RECORDING_RETRY[1])
            self._retry_later(RetryRecording(), self.recording_delay)
            return
        self._let_go_if_idle()
