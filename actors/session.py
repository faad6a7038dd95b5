"""SessionActor: the one actor that owns a live session.

It rehydrates from the session's stream, validates each command against the session's state,
appends the resulting events, and answers. Turns are strictly ordered: a message sent while a
run is in flight waits in a FIFO queue, and its prompt is built only when it starts, so it
includes the answer before it. Runs happen on the shared run pool, never on this actor's
thread; their outcomes come back as `RunCompleted` messages. This actor never asks another
actor anything, and holds no LMDB transaction across a run.

It keeps the commands, their order and the appending; what a turn runs and records is
decided by the pure functions of `turn.py`, a command's checks are in `checks.py`, and how
the session comes back from the log is in `rehydration.py`.

Across processes, a turn starts only under the session's lease (`ownership.LeaseKeeper`):
the actor takes it before a turn (reloading the session, so the prompt sees every earlier
answer, and closing a turn its dead owner left open), appends the turn's events fenced by
it, and lets it go when nothing is left to run. While another process holds it, queued
turns wait (their callers hear `TurnWaiting` once) and the actor looks again every
LEASE_POLL seconds. Other commands need no lease: they decide again on fresh state when
another process wrote first, until APPEND_RETRY_SECONDS have passed.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import (
    InvalidCommandError,
)
from ..events import (
    Event,
    ModeSwitched,
    SessionCreated,
    SessionExpired,
    SessionInfo,
    SessionResumed,
    SessionTitled,
    StudyContextSet,
)
from .annotations import check_owner, check_title
from .checks import check_canvas_state, check_text
from .expiry import expiry_due
from .messages import (
    Annotate,
    CancelTurn,
    CreateSession,
    ExpireSession,
    GetInfo,
    LeaseLost,
    ResumeSession,
    RetryRecording,
    RetryTurns,
    RunCompleted,
    SendMessage,
    SetStudy,
    SwitchMode,
)
from .rehydration import owner_is_elsewhere_and_alive
from .session_core import SessionServices, emit_all
from .session_turns import SessionTurns
from .updates import turn_failed

logger = logging.getLogger(__name__)

__all__ = ["SessionActor", "SessionServices", "emit_all"]


class SessionActor(SessionTurns):
    """Owns one live session: its state, its queue of turns, and its appends."""

    use_daemon_thread = True  # a program that never closes chatledger must still exit

    # -- lifecycle (run in the actor's own thread) ------------------------------------------

    def on_start(self) -> None:
        """Rehydrate from the log and close turns whose run died with its process."""
        self._reload()
        self._adopt_or_close_open_turn()
        if self.current is None:
            self._spawn_ahead("activation")

    def on_stop(self) -> None:
        """Fail queued turns (their callers must hear back), let the lease go and close a
        warm agent process."""
        self._fail_queue("the session was stopped before this message's turn began")
        if self.current is None:
            self.services.leases.release(self.session_id)
            if self.services.warm is not None:
                self.services.warm.release(self.session_id, "passivated")

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """A bug killed this actor: tell queued callers and drop out of the registry; the
        next use (or the run still in flight) restarts the session from the log."""
        self.log.error("session actor %s crashed: %r", self.session_id, exception_value)
        self.services.forget(self.session_id, self.actor_ref)
        self._fail_queue(f"the session actor crashed: {exception_value}")


    def _adopt_or_close_open_turn(self) -> None:
        if self.info.open_turn is None:
            return
        in_flight = self.services.pool.in_flight(self.session_id)
        if self.adopt is not None or in_flight:
            # The previous actor crashed or was passivated mid-run: the run lives on, and
            # its outcome comes to this actor.
            self.current = self.adopt or in_flight[0]
            self.services.touch(self.session_id, True)
            return
        started = self.last_run_started
        if started is not None and not started.lease_epoch and owner_is_elsewhere_and_alive(
            started
        ):
            return  # run by a live process of a release without leases
        try:
            if self._own_session():  # else its live owner elsewhere closes it
                self._let_go_if_idle()
        except Exception:  # the store refuses writes now: the next turn closes it
            logger.warning("%s: could not close the turn left open", self.session_id,
                           exc_info=True)


    # -- message dispatch (run in the actor's own thread) -----------------------------------

    def on_receive(self, message: Any) -> Any:
        """Handle one command or report. Runs in the actor's own thread."""
        if isinstance(message, RunCompleted):
            self._on_run_completed(message)
            return None
        if isinstance(message, RetryTurns):
            self.retries_pending.discard(RetryTurns)
            if self.current is None:
                self._start_next_turn()
            return None
        if isinstance(message, LeaseLost):
            self._lease_lost(message)
            return None
        if isinstance(message, RetryRecording):
            self.retries_pending.discard(RetryRecording)
            self._retry_recording()
            return None
        if isinstance(message, GetInfo):
            return self.info
        if isinstance(message, CreateSession):
            return self._create(message)
        if isinstance(message, ResumeSession):
            return self._resume(message)
        if isinstance(message, SwitchMode):
            return self._switch_mode(message.mode)
        if isinstance(message, SetStudy):
            return self._set_study(message.study_id)
        if isinstance(message, SendMessage):
            return self._send(message)
        if isinstance(message, CancelTurn):
            return self._cancel(message)
        if isinstance(message, ExpireSession):
            return self._expire(message)
        if isinstance(message, Annotate):
            self._append(lambda: message.decide(self.info))
            return self.info
        raise TypeError(f"SessionActor cannot handle {message!r}")


    def _create(self, command: CreateSession) -> SessionInfo:
        self._check_mode(command.mode)
        check_text("study_id", command.study_id, optional=True)
        check_owner(command.owner)
        title = check_title(command.title) if command.title is not None else ""

        def decide() -> list[Event]:
            if self.info.version:
                raise InvalidCommandError(f"session {self.session_id} already exists")
            created = SessionCreated(mode=command.mode, study_id=command.study_id,
                                     owner=command.owner)
            return [created, SessionTitled(title=title)] if title else [created]

        self._append(decide)
        self._spawn_ahead("activation")
        return self.info

    def _resume(self, command: ResumeSession) -> SessionInfo:
        if command.mode is not None:
            self._check_mode(command.mode)
        check_text("study_id", command.study_id, optional=True)

        def decide() -> list[Event]:
            if self.info.version == 0:
                return [SessionCreated(mode=command.mode or "user", study_id=command.study_id)]
            events: list[Event] = [SessionResumed()]
            if command.mode is not None and command.mode != self.info.mode:
                events.append(ModeSwitched(from_mode=self.info.mode, to_mode=command.mode))
            if command.change_study and command.study_id != self.info.study_id:
                events.append(StudyContextSet(study_id=command.study_id))
            return events

        self._append(decide)
        return self.info

    def _switch_mode(self, mode: str) -> SessionInfo:
        self._require_open()
        self._check_mode(mode)

        def decide() -> list[Event]:
            self._require_open()
            if mode == self.info.mode:
                return []
            return [ModeSwitched(from_mode=self.info.mode, to_mode=mode)]

        self._append(decide)
        return self.info

    def _set_study(self, study_id: str | None) -> SessionInfo:
        self._require_open()
        check_text("study_id", study_id, optional=True)

        def decide() -> list[Event]:
            self._require_open()
            return [StudyContextSet(study_id=study_id)] if study_id != self.info.study_id else []

        self._append(decide)
        return self.info

    def _expire(self, command: ExpireSession) -> bool:
        def decide() -> list[Event]:
            idle = expiry_due(self.info, now=command.now, expiry_age=command.expiry_age,
                              busy=self.current is not None or bool(self.queue))
            if idle is None:
                return []
            return [SessionExpired(reason=command.reason, idle_seconds=idle)]

        return self._append(decide)

    def _send(self, command: SendMessage) -> int:
        self._require_open()
        check_text("message", command.text)
        self._check_mode_allowed()
        check_canvas_state(command.canvas_state)
        self.queue.append(command)
        self.services.touch(self.session_id, True)
        if self.current is None:
            self._start_next_turn()
        return command.ticket

    def _cancel(self, command: CancelTurn) -> bool:
        for queued in list(self.queue):
            if queued.ticket == command.ticket:
                self.queue.remove(queued)
                self.told_waiting.discard(queued.ticket)
                emit_all(queued.sink, turn_failed("Turn cancelled", "cancelled"))
                return True
        if self.current is not None and self.current.ticket == command.ticket:
            self.current.cancel.set()
            return True
        return False

    def _fail_queue(self, reason: str) -> None:
        while self.queue:
            queued = self.queue.popleft()
            emit_all(queued.sink, turn_failed(reason, "cancelled"))
