"""The SessionActor's part that owns its session across processes: the lease.

A turn starts only under the session's lease (`ownership.LeaseKeeper`): the actor takes it
before a turn (reloading the session, so the prompt sees every earlier answer, and closing a
turn its dead owner left open), appends the turn's events fenced by it, and lets it go when
nothing is left to run. When there is nothing to do under the lease before the turn's start
is recorded, the grant is taken in the same durable commit as MessageSent + RunStarted
(`storage.append_taking_lease`): nothing is appended unless the lease is taken, so the
fencing is the same, one commit cheaper. While another process holds it, queued turns wait and the actor
looks again every LEASE_POLL seconds. Runs in the actor's own thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pykka

from ..errors import (
    ConcurrencyError,
    StaleLeaseError,
)
from ..events import (
    Event,
    RunFailed,
)
from ..storage import Lease, LeaseRequest
from .messages import (
    LeaseLost,
    RetryRecording,
    RetryTurns,
)
from .ownership import describe
from .session_core import LEASE_POLL, RECORDING_RETRY, SessionCore, emit_all
from .updates import TurnWaiting, turn_failed

logger = logging.getLogger(__name__)

T = TypeVar("T")


class LeaseNotTaken(Exception):
    """A turn's first append could not take the session's lease with it (another process
    got the lease, or wrote to the session, since the actor looked): nothing was appended."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"the lease of {session_id} was not taken with the turn's start")


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

    def _own_session_for_turn(self, defer: bool) -> bool:
        """Whether the next turn may start under the session's lease: held, or (`defer`) in
        reach and taken with the turn's first append (`lease_to_take`, one durable commit
        less), or taken now as `_own_session` does. The grant is deferred only when there is
        nothing to do under the lease first (no turn left open, nothing unrecorded): a
        session another process wrote meanwhile fails the append's version check, and the
        turn then starts the long way. Blocks briefly (one read when deferred)."""
        if self.lease is not None or self.lease_to_take is not None:
            return True
        if (defer and self.info.open_turn is None and self.unrecorded is None
                and self.services.leases.held(self.session_id) is None):
            request = self.services.leases.grant_in_reach(self.session_id)
            if request is None:
                return False
            self.lease_to_take = request
            return True
        return self._own_session()

    def _record_taking_lease(
        self, decide: Callable[[], tuple[list[Event], T]], request: LeaseRequest
    ) -> T:
        """Decide events and append them taking the lease `request` asks for, in one step;
        what the decision returned. LeaseNotTaken (nothing appended, no lease held) if the
        lease went to someone else or the session moved on since this actor looked. Blocks
        for one commit."""
        if self.info.open_turn is not None:  # seen on a reload: closed under the lease first
            raise LeaseNotTaken(self.session_id)
        batch, result = decide()
        try:
            taken = self.services.leases.append_taking(
                self.session_id, batch, self.info.version, request)
        except ConcurrencyError:
            taken = None
        if taken is None:
            raise LeaseNotTaken(self.session_id)
        self.lease, recorded = taken
        self._fold(recorded)
        return result

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

    def _turn_lease(self) -> Lease:
        """The lease a starting turn runs under: held, or the one it is about to take with
        its first append; StaleLeaseError if neither."""
        if self.lease is None and self.lease_to_take is not None:
            return self.lease_to_take.lease
        return self._fence()

    def _let_go_if_idle(self) -> None:
        """Let the lease go when nothing is left to run or to record (hand-over at once)."""
        self.lease_to_take = None
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
