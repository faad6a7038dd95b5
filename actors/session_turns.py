"""The SessionActor's part that runs turns: start the next queued turn, hand its run to the
pool (or the session's warm agent process), and record what the finished run produced
(decided by the pure functions of `turn.py`). Runs in the actor's own thread; the run itself
happens on the run pool.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import msgspec

from ..agent import AgentUpdate, CancelSwitch, RunOutcome, RunSpec, run_turn
from ..agent.control import ColdPermissionHandler, PermissionAnswerer
from ..errors import (
    InvalidEventError,
    StaleLeaseError,
)
from ..events import (
    Event,
)
from ..spend.caps import Reserve, budget_refusal, owner_turn_start
from ..telemetry import record_refusal, start_turn_trace
from .checks import check_open
from .fork import stale_fork_agent_session
from .messages import (
    RetryRecording,
    RunCompleted,
    RunTicket,
    SendMessage,
)
from .rehydration import HOST
from .session_core import emit_all
from .session_ownership import LeaseNotTaken, SessionOwnership
from .transcripts import TurnTranscript
from .turn import (
    RetryWithPromptHistory,
    TurnPlan,
    TurnStream,
    finish_run,
    forks_agent_session,
    plan_turn,
    resume_session_id,
    storable_event,
    turn_uuid,
    warm_turn_ahead,
)
from .updates import turn_failed

logger = logging.getLogger(__name__)


class SessionTurns(SessionOwnership):
    """Starts queued turns in order and records their outcomes."""

    # -- turns ------------------------------------------------------------------------------

    def _start_next_turn(self) -> None:
        """Start queued turns until one is running (a turn that cannot start fails at once)."""
        defer_lease = True  # until a deferred grant fails once: then the long way
        while self.current is None and self.queue:
            if self.services.closing.is_set():
                command = self.queue.popleft()
                emit_all(command.sink, turn_failed("chatledger is shutting down", "cancelled"))
                continue
            try:
                owned = self._own_session_for_turn(defer_lease)
            except Exception as error:  # the store cannot be written: the turn cannot start
                logger.exception("could not take the lease of %s", self.session_id)
                emit_all(self.queue.popleft().sink, turn_failed(str(error), "ledger_error"))
                continue
            if not owned:
                self._wait_for_owner()
                return
            command = self.queue.popleft()
            self.told_waiting.discard(command.ticket)
            # Under the owner's lock, the owner's next cap check sees this turn in flight.
            with owner_turn_start(self.info.owner, self.services.log,
                                  self.services.leases.owner,
                                  self.services.config.lease_ttl):
                if self._refuse_over_budget(command):
                    continue
                try:
                    self._start_turn(command)
                except LeaseNotTaken:  # nothing was appended: start it again, the long way
                    self.lease_to_take = None
                    defer_lease = False
                    self.queue.appendleft(command)
                except Exception as error:
                    self.log.exception("could not start a turn of %s", self.session_id)
                    emit_all(command.sink, turn_failed(str(error), "spawn_failed"))
        self.lease_to_take = None  # a grant in reach is only good for the turn it was for
        if self.current is None:
            self._let_go_if_idle()
            self.services.touch(self.session_id, False)

    def _refuse_over_budget(self, command: SendMessage) -> bool:
        """Refuse (recorded, and told to the caller) a turn a spend cap does not allow. A cap
        another process set is seen: a stale state is reloaded first (one index read)."""
        indexed = self.services.log.info(self.session_id)
        if indexed is not None and indexed.version != self.info.version:
            self._reload()
        config = self.services.config
        refused = budget_refusal(self.info, self.services.log, Reserve(
            usd=config.spend_reserve_usd, tokens=config.spend_reserve_tokens))
        if refused is None:
            return False
        self._append([refused])
        record_refusal(self.session_id, refused.scope)
        emit_all(command.sink, turn_failed(refused.message, "budget_exceeded"))
        return True

    def _start_turn(self, command: SendMessage, attempt: int = 1, resume: bool | None = None,
                    since_version: int = 0) -> None:
        """Record the turn's start (decided on the session as it is, again after a reload;
        fenced by the lease), then hand its run to the pool. A turn left open before it is
        closed first: no RunStarted stays dangling once a later turn has run. With a grant
        in reach (`lease_to_take`), the start is recorded taking the lease (LeaseNotTaken,
        nothing appended, if that fails). A retry passes the `since_version` of its first
        attempt (the session's version before that attempt's start)."""
        lease = self._turn_lease()
        before = [since_version]
        if attempt == 1 and self.lease is not None:
            self._close_cut_turn()

        def decide() -> tuple[list[Event], TurnPlan]:
            self._check_mode_allowed()
            info, lost = self.info, None
            if not since_version:
                before[0] = info.version
            resume_id = resume_session_id(info, self.services.config, resume)
            if self.services.warm is not None and resume is None:  # a live turn resumes
                resume_id = info.agent_session_id or info.fork_agent_session_id
            if attempt == 1 and forks_agent_session(info, resume_id):
                lost = stale_fork_agent_session(self.services.log, info, info.turn_count + 1)
                if lost is not None:  # the parent went on in it: prompt history instead
                    info = msgspec.structs.replace(info, fork=msgspec.structs.replace(
                        info.fork, agent_session_id=None) if info.fork else None)
            plan = plan_turn(
                info=info,
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
                last_started=self.last_run_started,
            )
            return ([lost, *plan.events] if lost is not None else plan.events), plan

        request, self.lease_to_take = self.lease_to_take, None
        plan = (self._record(decide, lease) if request is None
                else self._record_taking_lease(decide, request))
        ticket = RunTicket(
            session_id=self.session_id, ticket=command.ticket, turn=plan.turn, command=command,
            since_version=before[0])
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
        turn_id = turn_uuid(self.session_id, plan.turn, attempt)
        permissions = self.services.permissions
        ask_caller: ColdPermissionHandler | None = None
        if plan.approvals and permissions is not None:
            def ask_caller(message: dict[str, Any], answerer: PermissionAnswerer) -> None:
                """Put a cold run's tool request to the caller. Runs on the pool thread."""
                emit_all(command.sink, [permissions.request(
                    self.session_id, plan.turn, answerer, message)])

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
                input_format="stream-json" if plan.approvals else "text",
            )
            if transcript is not None:
                # a live process already holds the conversation: nothing to restore for it
                transcript.begin(restore=warm is None or plan.warm is None
                                 or not warm.has_process(self.session_id))
            try:
                if warm is None or plan.warm is None:
                    return run_turn(spec, self.services.dialect, forward,
                                    on_permission=ask_caller, turn_id=turn_id)
                outcome, events = warm.run(
                    self.session_id, plan.turn, plan.warm, spec, on_update=forward,
                    turn_id=turn_id,
                    on_request=lambda update: emit_all(command.sink, [update]))
                process_events.extend(events)
                return outcome
            finally:
                if transcript is not None:
                    transcript.finish()

        route = self.services.route_completion

        def done(finished: RunTicket, outcome: RunOutcome) -> None:
            """Report the run's end to the session. Runs on the pool thread."""
            if outcome.first_token_seconds is None and stream.first_token_seconds is not None:
                outcome = msgspec.structs.replace(
                    outcome, first_token_seconds=stream.first_token_seconds)
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
                self._start_turn(command, attempt=2, resume=False,
                                 since_version=ticket.since_version)
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
        self._spawn_ahead("after_turn")
        self._start_next_turn()

    def _spawn_ahead(self, reason: str) -> None:
        """Have the warm pool start the session's agent process before its next turn needs
        it (nothing when warm sessions are off, the session is not open, it has a process,
        or no slot is free). Never blocks: the process starts on a thread of its own."""
        warm = self.services.warm
        if warm is None or warm.has_process(self.session_id):
            return
        try:
            check_open(self.info)
            ahead = warm_turn_ahead(self.info, self.services.config, self.services.dialect,
                                    self.services.mcp_config_path(self.session_id,
                                                                  self.info.mode))
        except Exception:  # noqa: BLE001 - the turn itself will say what is wrong
            return
        if ahead is not None:
            warm.spawn_ahead(self.session_id, ahead, turn=self.info.turn_count + 1,
                             reason=reason)
