"""The decisions of a turn, as pure functions: its prompt and argv, what the caller sees while
the agent runs, and which events and updates a finished run produces.

The session actor keeps the commands, the ordering and the appending; everything it decides
about a turn is decided here, from the session's state and the run's outcome, so it can be
tested without actors, threads or processes. Nothing here does I/O, starts a process, or
touches the ledger: the argv and prompt come from `agent/`'s own builders, called with the
values the actor hands in.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from ..agent import (
    AgentDialect,
    AgentUpdate,
    Prompt,
    RunOutcome,
    TextDelta,
    TextReset,
    ToolCallCompleted,
    TurnOptions,
    build_prompt,
    canonical_json,
    extract_from_tool_calls,
    extract_modifications,
)
from ..config import Config
from ..events import (
    AgentSessionLost,
    CanvasModified,
    ColdRunChosen,
    Event,
    FailureReason,
    HistoryMessage,
    MessageSent,
    ResponseReceived,
    RunFailed,
    RunStarted,
    SessionInfo,
    SessionTitled,
    is_failure_reason,
    storable,
)
from .annotations import title_from_message
from .reseed import Reseed, reseed_for
from .updates import (
    AnyTurnUpdate,
    CanvasModificationUpdate,
    ErrorUpdate,
    TextDeltaUpdate,
    TextResetUpdate,
    TextUpdate,
    ToolCallUpdate,
    TurnDone,
)

logger = logging.getLogger(__name__)

RESUMABLE_AGENT_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
"""What an agent session id must look like to be passed back to the agent with `--resume`
(it comes from the agent's output, so it must never be able to pose as a flag)."""

TURN_ID_NAMESPACE = uuid.UUID("5f0c4d2e-9c1b-4a57-8f1e-2d6b8f3a7c10")


def turn_uuid(session_id: str, turn: int, attempt: int) -> str:
    """The ledger's id for one attempt of a turn, as a uuid (a live agent's user line carries
    it, and claude reuses it in its transcript): derived, so it needs no event of its own."""
    return str(uuid.uuid5(TURN_ID_NAMESPACE, f"{session_id}/{turn}/{attempt}"))


# -- starting a turn ------------------------------------------------------------------------


@dataclass(frozen=True)
class WarmTurn:
    """A turn as the warm pool runs it: the argv to spawn a live process with (resuming the
    agent's session if it has one), the argv that identifies the process (without the
    session), and the argv of the same turn run cold."""

    live_argv: tuple[str, ...]
    identity: tuple[str, ...]
    cold_argv: tuple[str, ...]
    reseed: Callable[[], Reseed | None] | None = None
    """With `live_argv` resuming: what builds the recorded turns its transcript must hold
    (re-seed), called only if the turn's process was freshly started with `--resume`."""


@dataclass(frozen=True)
class TurnPlan:
    """What a turn runs and records before its agent starts: its number, prompt, argv and
    the events (`MessageSent` on a first attempt, then `RunStarted`) to append;
    `transcript_mirror` says the agent will print its transcript entries."""

    turn: int
    prompt: Prompt
    argv: list[str]
    events: list[Event]
    transcript_mirror: bool = False
    warm: WarmTurn | None = None
    approvals: bool = False
    """The agent puts tool calls outside the allow-list to the caller (the cold argv asks
    for it, so its prompt goes as a stream-json line and stdin stays open)."""


def resume_session_id(info: SessionInfo, config: Config, resume: bool | None) -> str | None:
    """The agent session to resume for this turn, or None to send prompt history. `resume`
    None follows the configured strategy (and only an id that cannot pose as a flag)."""
    agent_session_id = info.agent_session_id or info.fork_agent_session_id
    if resume is None:
        resume = config.history_strategy == "resume" and bool(
            RESUMABLE_AGENT_SESSION_ID.fullmatch(agent_session_id or "")
        )
    return agent_session_id if resume else None


def forks_agent_session(info: SessionInfo, resume_id: str | None) -> bool:
    """Whether a turn resuming `resume_id` forks the agent's session (`--fork-session`): a
    fork's turn before it has an agent session of its own resumes its parent's."""
    return resume_id is not None and info.agent_session_id is None \
        and resume_id == info.fork_agent_session_id


def mirrors_transcript(config: Config, dialect: AgentDialect) -> bool:
    """Whether a turn runs with the agent's transcript mirror (`transcript_mirror`): "off"
    never; "on" whenever the dialect supports it with stream-json output; "auto" (the
    default) then too, but only with `history_strategy = "resume"` and a dialect that
    resumes from its transcript file: there the ledger's copy is what lets the next turn
    continue on any node (with prompt history it would only be evidence)."""
    choice = config.transcript_mirror
    if choice == "off" or not dialect.supports_transcript_mirror \
            or config.output_format != "stream-json":
        return False
    return choice == "on" or (config.history_strategy == "resume"
                              and dialect.resumes_from_transcript_file)


def plan_turn(
    *,
    info: SessionInfo,
    recent: Sequence[HistoryMessage],
    text: str,
    canvas_state: Any,
    config: Config,
    dialect: AgentDialect,
    mcp_config_path: str | None,
    attempt: int,
    resume: bool | None,
    host: str,
    pid: int,
    process_started_at: float = 0.0,
    lease_epoch: int = 0,
    live: bool = False,
    last_started: RunStarted | None = None,
) -> TurnPlan:
    """Plan a turn of the session as it is now (`info`, its `recent` messages): the prompt,
    the argv, and the events that record it. A retry (`attempt` > 1) reuses the turn's
    number and records no second `MessageSent`. `live` plans it for a warm agent process
    (which holds the conversation, so the agent's session is resumed whenever it has one);
    if the dialect cannot run live, the plan is cold and records `ColdRunChosen`. Raises
    ValueError for a bad argv setting."""
    turn = info.turn_count + (1 if attempt == 1 else 0)
    if live and resume is None:
        resume = bool(RESUMABLE_AGENT_SESSION_ID.fullmatch(
            info.agent_session_id or info.fork_agent_session_id or ""))
    resume_id = resume_session_id(info, config, resume)
    fork = forks_agent_session(info, resume_id)
    prompt = build_prompt(
        mode=info.mode,
        study_id=info.study_id,
        history=[] if resume_id else list(recent),
        canvas_state=canvas_state,
        message=text,
        window=config.history_window,
    )
    mirror = mirrors_transcript(config, dialect)
    approvals = (config.tool_approvals and info.mode == "user"
                 and config.output_format == "stream-json")
    argv = dialect.turn_argv(config.agent_command, TurnOptions(
        mode=info.mode,
        output_format=config.output_format,
        allowed_tools=config.allowed_tools,
        mcp_config_path=mcp_config_path,
        include_partial_messages=config.partial_messages,
        resume_session_id=resume_id,
        transcript_mirror=mirror,
        permission_prompt=approvals,
        fork_session=fork,
    ))
    warm: WarmTurn | None = None
    refusal = ""
    if live:
        try:
            warm = _warm_turn(dialect, config, info.mode, mcp_config_path, resume_id, argv,
                              fork)
        except ValueError as error:
            refusal = str(error)
        if warm is not None and resume_id:  # built only if a fresh process needs it
            warm = dataclasses.replace(warm, reseed=functools.partial(
                reseed_for, session_id=info.session_id, recent=tuple(recent),
                last_started=last_started, mode=info.mode, study_id=info.study_id,
                canvas_state=canvas_state, message=text, turn_id_of=turn_uuid))
    events: list[Event] = []
    if attempt == 1:
        events.append(MessageSent(turn=turn, text=text, canvas_state=canvas_state))
        if config.auto_title and info.title is None and info.message_count == 0:
            title = title_from_message(text)
            if title:
                events.append(SessionTitled(title=title, source="first_message"))
    if refusal:
        events.append(ColdRunChosen(turn=turn, reason="unsupported", message=refusal))
    strategy = "live" if warm is not None else "fork" if fork else \
        "resume" if resume_id else "prompt"
    events.append(
        RunStarted(
            turn=turn,
            argv=warm.live_argv if warm is not None else tuple(argv),
            prompt_digest=prompt.digest,
            attempt=attempt,
            template_version=prompt.template_version,
            history_strategy=strategy,
            resume_agent_session_id=resume_id,
            host=host,
            pid=pid,
            process_started_at=process_started_at,
            lease_epoch=lease_epoch,
        )
    )
    return TurnPlan(turn=turn, prompt=prompt, argv=argv, events=events,
                    transcript_mirror=mirror, warm=warm, approvals=approvals)


def warm_turn_ahead(info: SessionInfo, config: Config, dialect: AgentDialect,
                    mcp_config_path: str | None) -> WarmTurn | None:
    """The live process the session's next turn would run in, to start ahead of need (on
    activation, after a turn); None if the dialect cannot run live, or for a fork whose first
    turn has yet to fork its parent's agent session (that turn checks the parent first)."""
    if info.fork_agent_session_id and not info.agent_session_id:
        return None
    resume = bool(RESUMABLE_AGENT_SESSION_ID.fullmatch(info.agent_session_id or ""))
    try:
        return _warm_turn(dialect, config, info.mode, mcp_config_path,
                          resume_session_id(info, config, resume), ())
    except ValueError:
        return None


def _warm_turn(dialect: AgentDialect, config: Config, mode: str, mcp_config_path: str | None,
               resume_id: str | None, cold_argv: Sequence[str], fork: bool = False) -> WarmTurn:
    """The argv of a live process for this turn (ValueError if the dialect cannot)."""
    def live_argv(resume: str | None) -> tuple[str, ...]:
        return tuple(dialect.turn_argv(config.agent_command, TurnOptions(
            mode=mode, output_format=config.output_format, allowed_tools=config.allowed_tools,
            mcp_config_path=mcp_config_path, include_partial_messages=config.partial_messages,
            resume_session_id=resume, live=True,
            permission_prompt=config.tool_approvals and mode == "user",
            fork_session=fork and resume is not None,
        )))

    return WarmTurn(live_argv=live_argv(resume_id), identity=live_argv(None),
                    cold_argv=tuple(cold_argv))


# -- while the agent runs -------------------------------------------------------------------


class TurnStream:
    """Turns the agent's events into the caller's updates while a run goes on: text deltas
    (when asked for) and each canvas change once. Used from one thread (the run's)."""

    def __init__(self, *, stream_deltas: bool) -> None:
        self.stream_deltas = stream_deltas
        self._seen: set[bytes] = set()
        self._modifications: list[Any] = []
        self._started = time.monotonic()
        self.first_token_seconds: float | None = None
        """Seconds from this stream's creation (the turn's start) to the first text."""

    def updates_for(self, event: AgentUpdate) -> list[AnyTurnUpdate]:
        """The updates one agent event gives the caller (often none)."""
        if self.first_token_seconds is None and isinstance(event, (TextDelta, TextReset)) \
                and event.text:
            self.first_token_seconds = round(time.monotonic() - self._started, 6)
        if isinstance(event, TextDelta):
            if self.stream_deltas and event.text:
                return [TextDeltaUpdate(content=event.text)]
            return []
        if isinstance(event, TextReset):
            return [TextResetUpdate(content=event.text)] if self.stream_deltas else []
        if not isinstance(event, ToolCallCompleted):
            return []
        updates: list[AnyTurnUpdate] = []
        if self.stream_deltas:
            updates.append(ToolCallUpdate(name=event.tool_call.name,
                                          is_error=event.tool_call.is_error))
        for modification in extract_from_tool_calls([event.tool_call]):
            key = canonical_json(modification)
            if key not in self._seen:
                self._seen.add(key)
                self._modifications.append(modification)
                updates.append(CanvasModificationUpdate(modification=modification))
        return updates

    @property
    def streamed_modifications(self) -> tuple[Any, ...]:
        """The canvas changes streamed so far, in order."""
        return tuple(self._modifications)


# -- when the run has ended -----------------------------------------------------------------


@dataclass(frozen=True)
class RetryWithPromptHistory:
    """The agent lost the session it was asked to resume: record `lost`, then run the turn
    again (attempt 2) with prompt history instead."""

    lost: AgentSessionLost


@dataclass(frozen=True)
class RecordOutcome:
    """Record `events` (CanvasModified*, then ResponseReceived or RunFailed), then tell the
    caller `updates` (canvas changes not streamed yet, the text or error, and done)."""

    events: list[Event]
    updates: list[AnyTurnUpdate]


def resumed_session_was_lost(outcome: RunOutcome, started: RunStarted | None) -> bool:
    """Whether a failed run had resumed an agent session that the agent no longer has."""
    if outcome.ok or started is None or not started.resume_agent_session_id:
        return False
    return outcome.agent_session_lost


def failure_reason(outcome: RunOutcome) -> FailureReason:
    """The recorded reason of a failed run: the runner's, `exit_status` when it gave none,
    `internal_error` for one outside FAILURE_REASONS (a runner bug, never stored as is)."""
    reason = outcome.failure_reason or "exit_status"
    if is_failure_reason(reason):
        return reason
    logger.warning("the runner gave an unlisted failure reason %r; recorded as internal_error",
                   reason)
    return "internal_error"


def finish_run(
    *,
    turn: int,
    outcome: RunOutcome,
    started: RunStarted | None,
    agent_session_id: str | None,
    streamed_modifications: Sequence[Any] = (),
) -> RetryWithPromptHistory | RecordOutcome:
    """What a finished run of `turn` produces, given the session's last `RunStarted` and its
    agent session id: a retry with prompt history if a resumed agent session was lost, else
    the events to record and the updates for the caller."""
    if resumed_session_was_lost(outcome, started):
        return RetryWithPromptHistory(
            AgentSessionLost(turn=turn, agent_session_id=agent_session_id
                             or (started.resume_agent_session_id if started else None) or "",
                             message=outcome.message)
        )
    if outcome.ok:
        modifications = extract_modifications(outcome.text, list(outcome.tool_calls))
    else:
        modifications = extract_from_tool_calls(list(outcome.tool_calls))
    events: list[Event] = [CanvasModified(turn=turn, modification=m) for m in modifications]
    reason: FailureReason | None = None
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
                process_cost_usd=outcome.process_cost_usd,
                text_blocks=_kept_text_blocks(outcome),
                permission_denials=outcome.permission_denials,
                model_usage=outcome.model_usage,
                process_model_usage=outcome.process_model_usage,
                first_token_seconds=outcome.first_token_seconds,
            )
        )
    else:
        reason = failure_reason(outcome)
        events.append(
            RunFailed(
                turn=turn,
                reason=reason,
                message=outcome.message or "",
                stderr_tail=outcome.stderr_tail or "",
                exit_code=outcome.exit_code,
                partial_text=outcome.partial_text or outcome.text,
                permission_denials=outcome.permission_denials,
                cost_usd=outcome.cost_usd or None,
                usage=outcome.usage,
                model_usage=outcome.model_usage,
            )
        )
    already = {canonical_json(m) for m in streamed_modifications}
    updates: list[AnyTurnUpdate] = [
        CanvasModificationUpdate(modification=m)
        for m in modifications
        if canonical_json(m) not in already
    ]
    if outcome.ok:
        updates.append(TextUpdate(content=outcome.text))
    else:
        updates.append(ErrorUpdate(message=outcome.message or outcome.failure_reason or ""))
    updates.append(
        TurnDone(
            tool_calls=tuple(outcome.tool_calls),
            turn=turn,
            ok=outcome.ok,
            reason=reason,
            cost_usd=outcome.cost_usd,
            duration=outcome.duration,
        )
    )
    return RecordOutcome(events=events, updates=updates)


def _kept_text_blocks(outcome: RunOutcome) -> tuple[str, ...]:
    """Every assistant text block of the turn, unless they say no more than its text."""
    blocks = tuple(block for block in outcome.text_blocks if block)
    return () if blocks in ((), (outcome.text,)) else blocks


def storable_event(event: Event) -> Event:
    """`event` with what the agent printed made storable (huge integers, lone surrogates):
    an agent's output must never stop a turn from being recorded."""
    data = storable(msgspec.to_builtins(event))
    return msgspec.convert(data, type(event))
