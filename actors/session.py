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
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import pykka

from ..agent import AgentDialect, AgentUpdate, CancelSwitch, RunOutcome, RunSpec, run_turn
from ..config import Config
from ..errors import (
    ConcurrencyError,
    InvalidCommandError,
    InvalidEventError,
)
from ..events import (
    Event,
    HistoryMessage,
    ModeSwitched,
    Recorded,
    RunFailed,
    RunStarted,
    SessionCreated,
    SessionExpired,
    SessionInfo,
    SessionResumed,
    StudyContextSet,
    conversation,
    evolve,
)
from ..storage import EventStore
from .checks import check_canvas_state, check_mode, check_open, check_text, check_turn_allowed
from .expiry import expiry_due
from .messages import (
    CancelTurn,
    CreateSession,
    ExpireSession,
    GetInfo,
    ResumeSession,
    RunCompleted,
    RunTicket,
    SendMessage,
    SetStudy,
    SwitchMode,
)
from .rehydration import HOST, load_recent, mode_before, owner_is_elsewhere_and_alive
from .runs import RunPool
from .turn import (
    RetryWithPromptHistory,
    TurnPlan,
    TurnStream,
    finish_run,
    plan_turn,
    storable_event,
    turn_uuid,
)
from .updates import AnyTurnUpdate, TurnSink, turn_failed
from .warm import WarmPool

logger = logging.getLogger(__name__)

MAX_APPEND_ATTEMPTS = 8
"""How often an actor reloads and retries an append that another process raced."""

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
    warm: WarmPool | None = None


def emit_all(sink: TurnSink, updates: Iterable[AnyTurnUpdate]) -> None:
    """Hand updates to a caller's sink, in order; a broken consumer must not break the turn."""
    for update in updates:
        try:
            sink(update)
        except Exception:  # the consumer's problem: record it and go on
            logger.exception("a turn sink raised; the update was dropped")


class SessionActor(pykka.ThreadingActor):
    """Owns one live session: its state, its queue of turns, and its appends."""

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
        self.queue: collections.deque[SendMessage] = collections.deque()
        self.current: RunTicket | None = None

    # -- lifecycle (run in the actor's own thread) ------------------------------------------

    def on_start(self) -> None:
        """Rehydrate from the log and close turns whose run died with its process."""
        self._reload()
        self._adopt_or_close_open_turn()

    def on_stop(self) -> None:
        """Fail queued turns (their callers must hear back); close a warm agent process."""
        self._fail_queue("the session was stopped before this message's turn began")
        if self.services.warm is not None and self.current is None:
            self.services.warm.release(self.session_id, "passivated")

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """A bug killed this actor: tell queued callers and drop out of the registry; the
        next use (or the run still in flight) restarts the session from the log."""
        logger.error("session actor %s crashed: %r", self.session_id, exception_value)
        self.services.forget(self.session_id, self.actor_ref)
        self._fail_queue(f"the session actor crashed: {exception_value}")

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
        if started is not None and owner_is_elsewhere_and_alive(started):
            return
        self._append(
            lambda: [
                RunFailed(
                    turn=self.info.open_turn,
                    reason="interrupted",
                    message="the process running this turn stopped before the agent answered",
                )
            ]
            if self.info.open_turn is not None
            else []
        )

    # -- message dispatch (run in the actor's own thread) -----------------------------------

    def on_receive(self, message: Any) -> Any:
        """Handle one command or report. Runs in the actor's own thread."""
        if isinstance(message, RunCompleted):
            self._on_run_completed(message)
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
        raise TypeError(f"SessionActor cannot handle {message!r}")

    # -- commands ---------------------------------------------------------------------------

    def _record(self, decide: Callable[[], tuple[list[Event], T]]) -> T:
        """Decide events from the session's state and append them at its known version;
        returns what the successful decision returned with them. On a conflict (another
        process wrote to this session) reload the stream and decide again, up to
        MAX_APPEND_ATTEMPTS times: `decide` raises if the command no longer applies, so
        nothing is recorded twice or from a stale state. Appending is a short, blocking
        call: the writer batches it with others."""
        for attempt in range(1, MAX_APPEND_ATTEMPTS + 1):
            batch, result = decide()
            if not batch:
                return result
            try:
                recorded = self.services.log.append(self.session_id, batch, self.info.version)
            except ConcurrencyError:
                if attempt == MAX_APPEND_ATTEMPTS:
                    raise
                self._reload()
                continue
            for item in recorded:
                self.info = evolve(self.info, item)
            self._remember(recorded)
            return result
        raise AssertionError("unreachable")

    def _append(self, events: list[Event] | Callable[[], list[Event]]) -> bool:
        """Append `events` (or the events a function decides, as `_record` does); whether
        anything was appended."""
        decide = events if callable(events) else (lambda: events)

        def decided() -> tuple[list[Event], bool]:
            batch = decide()
            return batch, bool(batch)

        return self._record(decided)

    def _require_open(self) -> None:
        check_open(self.info)

    def _check_mode_allowed(self) -> None:
        check_turn_allowed(self.info, allow_power_mode=self.services.config.allow_power_mode)

    def _check_mode(self, mode: str) -> None:
        check_mode(mode, allow_power_mode=self.services.config.allow_power_mode)

    def _create(self, command: CreateSession) -> SessionInfo:
        self._check_mode(command.mode)
        check_text("study_id", command.study_id, optional=True)

        def decide() -> list[Event]:
            if self.info.version:
                raise InvalidCommandError(f"session {self.session_id} already exists")
            return [SessionCreated(mode=command.mode, study_id=command.study_id)]

        self._append(decide)
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

    # -- turns ------------------------------------------------------------------------------

    def _start_next_turn(self) -> None:
        """Start queued turns until one is running (a turn that cannot start fails at once)."""
        while self.current is None and self.queue:
            command = self.queue.popleft()
            if self.services.closing.is_set():
                emit_all(command.sink, turn_failed("chatledger is shutting down", "cancelled"))
                continue
            try:
                self._start_turn(command)
            except Exception as error:
                logger.exception("could not start a turn of %s", self.session_id)
                emit_all(command.sink, turn_failed(str(error), "spawn_failed"))
        if self.current is None:
            self.services.touch(self.session_id, False)

    def _start_turn(self, command: SendMessage, attempt: int = 1, resume: bool | None = None) -> None:
        """Record the turn's start (decided on the session as it is, again after a reload),
        then hand its run to the pool."""

        def decide() -> tuple[list[Event], TurnPlan]:
            self._check_mode_allowed()
            plan = plan_turn(
                info=self.info,
                recent=self.recent,
                text=command.text,
                canvas_state=command.canvas_state,
                config=self.services.config,
                dialect=self.services.dialect,
                mcp_config_path=self.services.mcp_config_path(self.session_id, self.info.mode),
                attempt=attempt,
                resume=resume,
                host=HOST,
                pid=os.getpid(),
                live=self.services.warm is not None,
            )
            return plan.events, plan

        plan = self._record(decide)
        ticket = RunTicket(
            session_id=self.session_id, ticket=command.ticket, turn=plan.turn, command=command
        )
        self.current = ticket
        stream = TurnStream(stream_deltas=command.stream_deltas)
        config = self.services.config

        def forward(event: AgentUpdate) -> None:
            """Stream one agent event to the caller. Runs on the pool thread."""
            emit_all(command.sink, stream.updates_for(event))

        process_events: list[Any] = []
        warm = self.services.warm

        def run(cancel: CancelSwitch) -> RunOutcome:
            """Run the agent for this turn. Runs on the pool thread and blocks."""
            spec = RunSpec(
                argv=tuple(plan.argv),
                prompt=plan.prompt.text,
                output_format=config.output_format,
                timeout=config.timeout,
                env_extras=config.agent_env,
                cwd=config.agent_cwd,
                cancel=cancel,
                max_output_bytes=config.max_output_bytes,
                kill_grace=config.kill_grace,
            )
            if warm is None or plan.warm is None:
                return run_turn(spec, self.services.dialect, forward)
            outcome, events = warm.run(
                self.session_id, plan.turn, plan.warm, spec, on_update=forward,
                turn_id=turn_uuid(self.session_id, plan.turn, attempt),
                on_request=lambda update: emit_all(command.sink, [update]))
            process_events.extend(events)
            return outcome

        route = self.services.route_completion

        def done(finished: RunTicket, outcome: RunOutcome) -> None:
            """Report the run's end to the session. Runs on the pool thread."""
            route(RunCompleted(session_id=self.session_id, ticket=finished, outcome=outcome,
                               streamed_modifications=stream.streamed_modifications,
                               process_events=tuple(process_events)))

        self.services.pool.submit(ticket, run, done)

    def _on_run_completed(self, message: RunCompleted) -> None:
        ticket = self.current
        if ticket is None or ticket.ticket != message.ticket.ticket:
            logger.warning("%s: a run completion for ticket %s arrived unexpectedly",
                           self.session_id, message.ticket.ticket)
            return
        self.current = None
        command = ticket.command
        turn = message.ticket.turn
        try:
            decision = finish_run(
                turn=turn,
                outcome=message.outcome,
                started=self.last_run_started,
                agent_session_id=self.info.agent_session_id,
                streamed_modifications=message.streamed_modifications,
            )
            process_events = list(message.process_events)
            if isinstance(decision, RetryWithPromptHistory):
                self._append([*process_events, decision.lost])
                self._start_turn(command, attempt=2, resume=False)
                return
            events = [*process_events, *decision.events]
            try:
                self._append(events)
            except InvalidEventError:  # refused before anything was written
                self._append([storable_event(event) for event in events])
            emit_all(command.sink, decision.updates)
        except Exception as error:
            logger.exception("%s: could not record the outcome of turn %s",
                             self.session_id, turn)
            emit_all(command.sink,
                     turn_failed(f"could not record the answer: {error}", "ledger_error", turn))
        self._start_next_turn()


