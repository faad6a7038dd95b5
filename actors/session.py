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

import collections
import contextlib
import logging
import os
import random
import threading
import time
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
    StaleLeaseError,
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
    SessionTitled,
    StudyContextSet,
    conversation,
    evolve,
)
from ..spend.caps import budget_refusal
from ..storage import EventStore, Lease
from ..telemetry import TrackedQueue, record_refusal, session_logger, start_turn_trace
from .annotations import check_owner, check_title
from .checks import check_canvas_state, check_mode, check_open, check_text, check_turn_allowed
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
    RunTicket,
    SendMessage,
    SetStudy,
    SwitchMode,
)
from .ownership import LeaseKeeper, describe
from .preflight import check_power_mode_runs
from .rehydration import HOST, load_recent, mode_before, owner_is_elsewhere_and_alive
from .runs import RunPool
from .transcripts import Transcripts, TurnTranscript
from .turn import (
    RetryWithPromptHistory,
    TurnPlan,
    TurnStream,
    finish_run,
    plan_turn,
    storable_event,
    turn_uuid,
)
from .updates import AnyTurnUpdate, TurnSink, TurnWaiting, turn_failed
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


def emit_all(sink: TurnSink, updates: Iterable[AnyTurnUpdate]) -> None:
    """Hand updates to a caller's sink, in order; a broken consumer must not break the turn."""
    for update in updates:
        try:
            sink(update)
        except Exception:  # the consumer's problem: record it and go on
            logger.exception("a turn sink raised; the update was dropped")


class SessionActor(pykka.ThreadingActor):
    """Owns one live session: its state, its queue of turns, and its appends."""

    use_daemon_thread = True  # a program that never closes chatledger must still exit

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
        self.told_waiting: set[int] = set()  # tickets whose caller heard TurnWaiting
        self.retries_pending: set[type] = set()
        self.unrecorded: tuple[int, str] | None = None  # (turn, why) of an unwritten outcome
        self.recording_delay = RECORDING_RETRY[0]

    # -- lifecycle (run in the actor's own thread) ------------------------------------------

    def on_start(self) -> None:
        """Rehydrate from the log and close turns whose run died with its process."""
        self._reload()
        self._adopt_or_close_open_turn()

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

    # -- ownership across processes (run in the actor's own thread) -------------------------

    def _own_session(self) -> bool:
        """Whether this actor holds the session's lease, taking it if it is free (or its
        holder dead). A fresh grant reloads the session (another process may have run turns)
        and closes a turn its previous owner left open. Blocks briefly."""
        if self.lease is not None:
            return True
        lease = self.services.leases.acquire(self.session_id)
        if lease is None:
            return False
        self.lease = lease
        self._reload()
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
            for item in recorded:
                self.info = evolve(self.info, item)
            self._remember(recorded)
            return result

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

    # -- turns ------------------------------------------------------------------------------

    def _start_next_turn(self) -> None:
        """Start queued turns until one is running (a turn that cannot start fails at once)."""
        while self.current is None and self.queue:
            if self.services.closing.is_set():
                command = self.queue.popleft()
                emit_all(command.sink, turn_failed("chatledger is shutting down", "cancelled"))
                continue
            try:
                owned = self._own_session()
            except Exception as error:  # the store cannot be written: the turn cannot start
                logger.exception("could not take the lease of %s", self.session_id)
                emit_all(self.queue.popleft().sink, turn_failed(str(error), "ledger_error"))
                continue
            if not owned:
                self._wait_for_owner()
                return
            command = self.queue.popleft()
            self.told_waiting.discard(command.ticket)
            if self._refuse_over_budget(command):
                continue
            try:
                self._start_turn(command)
            except Exception as error:
                self.log.exception("could not start a turn of %s", self.session_id)
                emit_all(command.sink, turn_failed(str(error), "spawn_failed"))
        if self.current is None:
            self._let_go_if_idle()
            self.services.touch(self.session_id, False)

    def _refuse_over_budget(self, command: SendMessage) -> bool:
        """Refuse (recorded, and told to the caller) a turn a spend cap does not allow. A cap
        another process set is seen: a stale state is reloaded first (one index read)."""
        indexed = self.services.log.info(self.session_id)
        if indexed is not None and indexed.version != self.info.version:
            self._reload()
        refused = budget_refusal(self.info, self.services.log)
        if refused is None:
            return False
        self._append([refused])
        record_refusal(self.session_id, refused.scope)
        emit_all(command.sink, turn_failed(refused.message, "budget_exceeded"))
        return True

    def _start_turn(self, command: SendMessage, attempt: int = 1, resume: bool | None = None) -> None:
        """Record the turn's start (decided on the session as it is, again after a reload;
        fenced by the lease), then hand its run to the pool. A turn left open before it is
        closed first: no RunStarted stays dangling once a later turn has run."""
        lease = self._fence()
        if attempt == 1:
            self._close_cut_turn()

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
                process_started_at=self.services.leases.owner.started_at,
                lease_epoch=lease.epoch,
                live=self.services.warm is not None,
            )
            return plan.events, plan

        plan = self._record(decide, lease)
        ticket = RunTicket(
            session_id=self.session_id, ticket=command.ticket, turn=plan.turn, command=command
        )
        ticket.trace = start_turn_trace(self.session_id, plan.turn, command.queued_at_ns, attempt)
        self.current = ticket
        stream = TurnStream(stream_deltas=command.stream_deltas)
        config = self.services.config

        transcript = TurnTranscript.for_turn(self.services.transcripts, self.services.dialect,
                                             plan, self.session_id, config)

        def forward(event: AgentUpdate) -> None:
            """Stream one agent event to the caller (transcript frames go to the ledger
            instead). Runs on the pool thread."""
            if transcript is not None and transcript.take(event):
                return
            ticket.trace.agent_event(event)
            emit_all(command.sink, stream.updates_for(event))

        process_events: list[Any] = []
        warm = self.services.warm

        def run(cancel: CancelSwitch) -> RunOutcome:
            """Restore the transcript to resume from and start its mirror, run the agent for
            this turn (in the session's warm process when there is one), then wait (bounded)
            for the mirror's last frames. Runs on the pool thread and blocks."""
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
            if transcript is not None:
                transcript.begin()
            try:
                if warm is None or plan.warm is None:
                    return run_turn(spec, self.services.dialect, forward)
                outcome, events = warm.run(
                    self.session_id, plan.turn, plan.warm, spec, on_update=forward,
                    turn_id=turn_uuid(self.session_id, plan.turn, attempt),
                    on_request=lambda update: emit_all(command.sink, [update]))
                process_events.extend(events)
                return outcome
            finally:
                if transcript is not None:
                    transcript.finish()

        route = self.services.route_completion

        def done(finished: RunTicket, outcome: RunOutcome) -> None:
            """Report the run's end to the session. Runs on the pool thread."""
            finished.trace.result(outcome)
            route(RunCompleted(session_id=self.session_id, ticket=finished, outcome=outcome,
                               streamed_modifications=stream.streamed_modifications,
                               recorded_first=tuple(transcript.events()) if transcript else (),
                               process_events=tuple(process_events)))

        self.services.pool.submit(ticket, run, done)
        ticket.trace.agent_started()

    def _on_run_completed(self, message: RunCompleted) -> None:
        ticket = self.current
        if ticket is None or ticket.ticket != message.ticket.ticket:
            self.log.warning("%s: a run completion for ticket %s arrived unexpectedly",
                           self.session_id, message.ticket.ticket)
            return
        self.current = None
        command = ticket.command
        turn = message.ticket.turn
        try:
            if message.recorded_first:  # what the run job did before the agent started
                self._append(list(message.recorded_first), lease=self._fence())
            decision = finish_run(
                turn=turn,
                outcome=message.outcome,
                started=self.last_run_started,
                agent_session_id=self.info.agent_session_id,
                streamed_modifications=message.streamed_modifications,
            )
            process_events = list(message.process_events)
            if isinstance(decision, RetryWithPromptHistory):
                ticket.trace.finished(turn_failed("retried with prompt history",
                                                  "agent_error", turn))
                self._append([*process_events, decision.lost], lease=self._fence())
                self._start_turn(command, attempt=2, resume=False)
                return
            lease = self._fence()
            last = not self.queue  # then the lease goes with the outcome: one write, not two
            events = [*process_events, *decision.events]
            try:
                self._append(events, lease=lease, release_lease=last)
            except InvalidEventError:  # refused before anything was written
                self._append([storable_event(event) for event in events],
                             lease=lease, release_lease=last)
            if last:  # idle before the caller hears: it may passivate, or hand over
                self.lease = None
                self.services.leases.forget(self.session_id, lease)
                self.services.touch(self.session_id, False)
            emit_all(command.sink, decision.updates)
            ticket.trace.finished(decision.updates)
        except StaleLeaseError:
            logger.warning("%s: another process took the session over during turn %s",
                           self.session_id, turn)
            self.lease = None
            failed = turn_failed(
                "another process took this session over while this turn ran (it had stopped "
                "renewing its lease): the answer was not recorded", "ledger_error", turn)
            emit_all(command.sink, failed)
            ticket.trace.finished(failed)
        except Exception as error:
            self.log.exception("%s: could not record the outcome of turn %s",
                             self.session_id, turn)
            self.unrecorded = (turn, str(error))
            self._retry_later(RetryRecording(), self.recording_delay)
            failed = turn_failed(f"could not record the answer: {error}", "ledger_error", turn)
            emit_all(command.sink, failed)
            ticket.trace.finished(failed)
        self._start_next_turn()


