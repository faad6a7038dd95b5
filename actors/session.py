"""SessionActor: the one actor that owns a live session.

It rehydrates from the session's stream, validates each command against the session's state,
appends the resulting events, and answers. Turns are strictly ordered: a message sent while a
run is in flight waits in a FIFO queue, and its prompt is built only when it starts, so it
includes the answer before it. Runs happen on the shared run pool, never on this actor's
thread; their outcomes come back as `RunCompleted` messages. This actor never asks another
actor anything, and holds no LMDB transaction across a run.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pykka

from ..agent import (
    CancelSwitch,
    RunOutcome,
    TextDelta,
    ToolCallCompleted,
    build_argv,
    build_prompt,
    canonical_json,
    extract_from_tool_calls,
    extract_modifications,
    run_agent,
)
from ..config import Config
from ..errors import (
    ConcurrencyError,
    InvalidCommandError,
    InvalidEventError,
    UnknownSessionError,
)
from ..events import (
    MODES,
    AgentSessionLost,
    CanvasModified,
    Event,
    HistoryMessage,
    MessageSent,
    ModeSwitched,
    Recorded,
    ResponseReceived,
    RunFailed,
    RunStarted,
    SessionCreated,
    SessionExpired,
    SessionInfo,
    SessionResumed,
    StudyContextSet,
    conversation,
    evolve,
    history,
    storable,
)
from ..events.codec import ENCODE_ERRORS
from ..events.projections import STATUS_EXPIRED
from ..storage import EventStore
from .messages import (
    CancelTurn,
    CreateSession,
    ExpireSession,
    GetHistory,
    GetInfo,
    GetStatus,
    ResumeSession,
    RunCompleted,
    RunTicket,
    SendMessage,
    SetStudy,
    SwitchMode,
    TurnSink,
)
from .preflight import check_power_mode_runs
from .runs import RunPool

logger = logging.getLogger(__name__)

HOST = socket.gethostname()
MAX_APPEND_ATTEMPTS = 8
"""How often an actor reloads and retries an append that another process raced."""
RESUMABLE_AGENT_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
"""What an agent session id must look like to be passed back to the agent with `--resume`
(it comes from the agent's output, so it must never be able to pose as a flag)."""
NO_CONVERSATION = "No conversation found with session ID"


@dataclass
class SessionServices:
    """What every session actor of a runtime shares: config, log, pool, MCP files, routing."""

    config: Config
    log: EventStore
    pool: RunPool
    route_completion: Callable[[RunCompleted], None]
    mcp_config_path: Callable[[str, str], str | None]
    touch: Callable[[str, bool], None]
    forget: Callable[[str, Any], None]
    remove_session_files: Callable[[str], None]
    closing: threading.Event


def safe_emit(sink: TurnSink, item: dict[str, Any]) -> None:
    """Hand one update to a caller's sink; a broken consumer must not break the turn."""
    try:
        sink(item)
    except Exception:  # the consumer's problem: record it and go on
        logger.exception("a turn sink raised; the update was dropped")


def check_canvas_state(canvas_state: Any) -> None:
    """Refuse a canvas state that is not JSON-serialisable (or that the ledger could not
    store: a cycle, a lone surrogate, an integer beyond 64 bits), before anything is recorded."""
    try:
        msgspec.json.encode(canvas_state)
        msgspec.msgpack.encode(canvas_state)
    except ENCODE_ERRORS as error:
        if isinstance(error, RecursionError):
            error = ValueError("it is nested too deeply or refers to itself")
        raise InvalidCommandError(
            f"canvas_state must be JSON-serialisable (dicts, lists, strings, numbers, "
            f"booleans, null) and storable: {error}"
        ) from None


def check_text(what: str, value: Any, *, optional: bool = False) -> None:
    """Refuse a value that is not a string of valid Unicode (None too, if `optional`)."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        allowed = "a string or None" if optional else "a string"
        raise InvalidCommandError(f"{what} must be {allowed}, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidCommandError(
            f"{what} is not valid Unicode (a lone surrogate at index {error.start}); "
            "decode it with errors='replace' first"
        ) from None


def storable_event(event: Event) -> Event:
    """`event` with what the agent printed made storable (huge integers, lone surrogates):
    an agent's output must never stop a turn from being recorded."""
    data = storable(msgspec.to_builtins(event))
    return msgspec.convert(data, type(event))


def _owner_is_elsewhere_and_alive(started: RunStarted) -> bool:
    """Whether another live process on this host still runs this turn."""
    if started.host != HOST or started.pid in (0, os.getpid()):
        return False
    try:
        os.kill(started.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_recent(log: EventStore, session_id: str, window: int) -> tuple[SessionInfo, list[Recorded]]:
    """A session's info and the tail of its stream a live session keeps: whole turns holding
    its last `window` conversation messages and its last RunStarted.

    The info comes from the session index, which the writer updates in the same transaction
    as the stream, so a long session comes back to life in time proportional to the window,
    not to its length. The tail is read again, four times longer, until it is enough.
    """
    count = 4 * window + 8
    while True:
        info, records = log.latest(session_id, count)
        if info is None:
            return SessionInfo(session_id=session_id), []
        if not records or records[0].version == 1:  # the whole stream
            return info, records
        starts = [index for index, recorded in enumerate(records)
                  if isinstance(recorded.event, MessageSent)]
        if starts:
            tail = records[starts[0]:]
            if len(conversation(tail)) >= window and any(
                isinstance(recorded.event, RunStarted) for recorded in tail
            ):
                return info, tail
        count *= 4


def mode_before(records: list[Recorded], mode_now: str) -> str:
    """The session's mode before `records`, given its mode after them."""
    for recorded in records:
        if isinstance(recorded.event, ModeSwitched):
            return recorded.event.from_mode
    return mode_now


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
        """Fail queued turns (their callers must hear back)."""
        self._fail_queue("the session was stopped before this message's turn began")

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
        if started is not None and _owner_is_elsewhere_and_alive(started):
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
        if isinstance(message, GetHistory):
            return history(self.services.log.read_session(self.session_id))
        if isinstance(message, GetStatus):
            return self.current is not None or bool(self.queue)
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

    def _append(self, events: list[Event] | Callable[[], list[Event]]) -> list[Recorded]:
        """Append at the known version. On a conflict (another process wrote to this session)
        reload the stream and try again, up to MAX_APPEND_ATTEMPTS times. `events` may be a
        function that decides the events from the (reloaded) state, raising if the command
        no longer applies, so nothing is recorded twice or from a stale state. Appending is
        a short, blocking call: the writer batches it with others."""
        decide = events if callable(events) else (lambda: events)
        for attempt in range(1, MAX_APPEND_ATTEMPTS + 1):
            batch = decide()
            if not batch:
                return []
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
            return recorded
        raise AssertionError("unreachable")

    def _require_open(self) -> None:
        if self.info.version == 0:
            raise UnknownSessionError(f"Session not found: {self.session_id}")
        if self.info.status == STATUS_EXPIRED:
            raise InvalidCommandError(
                f"session {self.session_id} expired; resume it to go on"
            )

    def _check_mode_allowed(self) -> None:
        """Refuse a turn in power mode when this deployment does not allow power mode (the
        session may have been switched to it by a process, or a release, that did)."""
        if self.info.mode == "power" and not self.services.config.allow_power_mode:
            raise InvalidCommandError(
                f"session {self.session_id} is in power mode, which this deployment does not "
                "allow (CHATLEDGER_ALLOW_POWER_MODE): switch it to user mode to go on"
            )

    def _check_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise InvalidCommandError(
                f"unknown mode {mode!r}: choose one of {', '.join(MODES)}"
            )
        if mode == "power" and not self.services.config.allow_power_mode:
            raise InvalidCommandError(
                "power mode is not allowed by this deployment (CHATLEDGER_ALLOW_POWER_MODE)"
            )
        if mode == "power":
            check_power_mode_runs(self.services.config)

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
        if self.info.version == 0 or self.info.status == STATUS_EXPIRED:
            return False
        if self.current is not None or self.queue:
            return False

        def decide() -> list[Event]:
            if self.info.status == STATUS_EXPIRED:
                return []
            return [SessionExpired(reason=command.reason, idle_seconds=command.idle_seconds)]

        return bool(self._append(decide))

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
                safe_emit(queued.sink, {"type": "error", "message": "Turn cancelled"})
                safe_emit(queued.sink, {"type": "done", "tool_calls": [], "turn": None,
                                        "ok": False, "reason": "cancelled"})
                return True
        if self.current is not None and self.current.ticket == command.ticket:
            self.current.cancel.set()
            return True
        return False

    def _fail_queue(self, reason: str) -> None:
        while self.queue:
            queued = self.queue.popleft()
            safe_emit(queued.sink, {"type": "error", "message": reason})
            safe_emit(queued.sink, {"type": "done", "tool_calls": [], "turn": None,
                                    "ok": False, "reason": "cancelled"})

    # -- turns ------------------------------------------------------------------------------

    def _start_next_turn(self) -> None:
        """Start queued turns until one is running (a turn that cannot start fails at once)."""
        while self.current is None and self.queue:
            command = self.queue.popleft()
            if self.services.closing.is_set():
                safe_emit(command.sink, {"type": "error", "message": "chatledger is shutting down"})
                safe_emit(command.sink, {"type": "done", "tool_calls": [], "turn": None,
                                         "ok": False, "reason": "cancelled"})
                continue
            try:
                self._start_turn(command)
            except Exception as error:
                logger.exception("could not start a turn of %s", self.session_id)
                safe_emit(command.sink, {"type": "error", "message": str(error)})
                safe_emit(command.sink, {"type": "done", "tool_calls": [], "turn": None,
                                         "ok": False, "reason": "spawn_failed"})
        if self.current is None:
            self.services.touch(self.session_id, False)

    def _start_turn(self, command: SendMessage, attempt: int = 1, resume: bool | None = None) -> None:
        config = self.services.config
        decided: dict[str, Any] = {}

        def decide() -> list[Event]:
            """The turn's events from the session as it is now (again after a reload)."""
            self._check_mode_allowed()
            turn = self.info.turn_count + (1 if attempt == 1 else 0)
            use_resume = resume
            if use_resume is None:
                use_resume = config.history_strategy == "resume" and bool(
                    RESUMABLE_AGENT_SESSION_ID.fullmatch(self.info.agent_session_id or "")
                )
            resume_id = self.info.agent_session_id if use_resume else None
            prompt = build_prompt(
                mode=self.info.mode,
                study_id=self.info.study_id,
                history=[] if resume_id else list(self.recent),
                canvas_state=command.canvas_state,
                message=command.text,
                window=config.history_window,
            )
            argv = build_argv(
                config.agent_command,
                mode=self.info.mode,
                output_format=config.output_format,
                allowed_tools=config.allowed_tools,
                mcp_config_path=self.services.mcp_config_path(self.session_id, self.info.mode),
                include_partial_messages=config.partial_messages,
                resume_session_id=resume_id,
            )
            decided.update(turn=turn, prompt=prompt, argv=argv)
            events: list[Event] = []
            if attempt == 1:
                events.append(MessageSent(turn=turn, text=command.text,
                                          canvas_state=command.canvas_state))
            events.append(
                RunStarted(
                    turn=turn,
                    argv=tuple(argv),
                    prompt_digest=prompt.digest,
                    attempt=attempt,
                    template_version=prompt.template_version,
                    history_strategy="resume" if resume_id else "prompt",
                    resume_agent_session_id=resume_id,
                    host=HOST,
                    pid=os.getpid(),
                )
            )
            return events

        self._append(decide)
        turn: int = decided["turn"]
        prompt = decided["prompt"]
        argv: list[str] = decided["argv"]
        ticket = RunTicket(
            session_id=self.session_id, ticket=command.ticket, turn=turn, command=command
        )
        self.current = ticket
        streamed: list[Any] = []
        seen: set[bytes] = set()

        def forward(event: Any) -> None:
            """Stream one agent event to the caller. Runs on the pool thread."""
            if isinstance(event, TextDelta):
                if command.stream_deltas and event.text:
                    safe_emit(command.sink, {"type": "text_delta", "content": event.text})
            elif isinstance(event, ToolCallCompleted):
                if command.stream_deltas:  # live progress for a streaming caller (the CLI)
                    safe_emit(command.sink, {"type": "tool_call", "name": event.tool_call.name,
                                             "is_error": event.tool_call.is_error})
                for modification in extract_from_tool_calls([event.tool_call]):
                    key = canonical_json(modification)
                    if key not in seen:
                        seen.add(key)
                        streamed.append(modification)
                        safe_emit(command.sink,
                                  {"type": "canvas_modification", "modification": modification})

        def run(cancel: CancelSwitch) -> RunOutcome:
            """Run the agent for this turn. Runs on the pool thread and blocks."""
            return run_agent(
                argv,
                prompt.text,
                output_format=config.output_format,
                timeout=config.timeout,
                env=_agent_environment(config),
                cwd=config.agent_cwd,
                on_event=forward,
                cancel=cancel,
                max_output_bytes=config.max_output_bytes,
                kill_grace=config.kill_grace,
            )

        route = self.services.route_completion

        def done(finished: RunTicket, outcome: RunOutcome) -> None:
            route(RunCompleted(session_id=self.session_id, ticket=finished,
                               outcome=outcome, streamed_modifications=tuple(streamed)))

        self.services.pool.submit(ticket, run, done)

    def _on_run_completed(self, message: RunCompleted) -> None:
        ticket = self.current
        if ticket is None or ticket.ticket != message.ticket.ticket:
            logger.warning("%s: a run completion for ticket %s arrived unexpectedly",
                           self.session_id, message.ticket.ticket)
            return
        self.current = None
        command = ticket.command
        sink = command.sink
        outcome = message.outcome
        try:
            if not outcome.ok and self._resumed_session_was_lost(outcome):
                lost = self.info.agent_session_id or ""
                self._append([AgentSessionLost(turn=message.ticket.turn, agent_session_id=lost,
                                               message=outcome.message)])
                self._start_turn(command, attempt=2, resume=False)
                return
            self._record_outcome(message, sink)
        except Exception as error:
            logger.exception("%s: could not record the outcome of turn %s",
                             self.session_id, message.ticket.turn)
            safe_emit(sink, {"type": "error", "message": f"could not record the answer: {error}"})
            safe_emit(sink, {"type": "done", "tool_calls": [], "turn": message.ticket.turn,
                             "ok": False, "reason": "ledger_error"})
        self._start_next_turn()

    def _resumed_session_was_lost(self, outcome: RunOutcome) -> bool:
        started = self.last_run_started
        if started is None or not started.resume_agent_session_id:
            return False
        text = " ".join([outcome.message or "", outcome.text or "", outcome.stderr_tail or ""])
        return NO_CONVERSATION in text

    def _record_outcome(self, message: RunCompleted, sink: TurnSink) -> None:
        outcome = message.outcome
        turn = message.ticket.turn
        if outcome.ok:
            modifications = extract_modifications(outcome.text, list(outcome.tool_calls))
        else:
            modifications = extract_from_tool_calls(list(outcome.tool_calls))
        events: list[Event] = [CanvasModified(turn=turn, modification=m) for m in modifications]
        if outcome.ok:
            events.append(
                ResponseReceived(
                    turn=turn,
                    text=outcome.text,
                    tool_calls=tuple(outcome.tool_calls),
                    exit_code=outcome.exit_code if outcome.exit_code is not None else 0,
                    duration=outcome.duration,
                    cost_usd=outcome.cost_usd,
                    usage=outcome.usage,
                    agent_session_id=outcome.agent_session_id,
                )
            )
        else:
            events.append(
                RunFailed(
                    turn=turn,
                    reason=outcome.failure_reason or "exit_status",
                    message=outcome.message or "",
                    stderr_tail=outcome.stderr_tail or "",
                    exit_code=outcome.exit_code,
                )
            )
        try:
            self._append(events)
        except InvalidEventError:  # refused before anything was written
            self._append([storable_event(event) for event in events])
        already = {canonical_json(m) for m in message.streamed_modifications}
        for modification in modifications:
            if canonical_json(modification) not in already:
                safe_emit(sink, {"type": "canvas_modification", "modification": modification})
        if outcome.ok:
            safe_emit(sink, {"type": "text", "content": outcome.text})
        else:
            safe_emit(sink, {"type": "error", "message": outcome.message or outcome.failure_reason})
        safe_emit(
            sink,
            {
                "type": "done",
                "tool_calls": [msgspec.to_builtins(call) for call in outcome.tool_calls],
                "turn": turn,
                "ok": outcome.ok,
                "reason": outcome.failure_reason,
                "cost_usd": outcome.cost_usd,
                "duration": outcome.duration,
            },
        )


def _agent_environment(config: Config) -> dict[str, str] | None:
    """The agent's environment: ours plus the configured extras (never recorded); None
    when there are none (the runner copies ours: one copy per turn, not two)."""
    if not config.agent_env:
        return None
    return {**os.environ, **config.agent_env}


def idle_seconds(info: SessionInfo, now: float | None = None) -> float:
    """Seconds since the session's last recorded activity."""
    if info.last_active is None:
        return 0.0
    now = time.time() if now is None else now
    return max(0.0, now - info.last_active.timestamp())
