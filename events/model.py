"""The facts chatledger records: frozen msgspec Structs in one tagged union.

Every event is a past-tense fact with an explicit, stable tag, so renaming a class never
breaks a stored log. New fields get defaults and a field's type never changes; breaking
changes go through the upcasters in `codec.py`. This module does no I/O.

The structs are declared `gc=False`: a replay decodes millions of them, and keeping them out
of the cycle collector makes decoding (and holding a long session) several times cheaper. They
are frozen and hold JSON-like data (ledger input is checked to be serialisable, which rules
out cycles), so they can never be part of a reference cycle the collector would need to break.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeGuard, TypeVar, get_args

import msgspec

MODES = ("user", "power")
"""The permission modes a session can be in."""

FailureReason = Literal[
    "timeout",
    "not_found",
    "exit_status",
    "agent_error",
    "interrupted",
    "cancelled",
    "output_too_large",
    "spawn_failed",
    "internal_error",
    "not_recorded",
]
"""Why an agent run can fail; `RunFailed.reason` holds one of these (`internal_error`: a bug
in chatledger ended the run, not the agent; `not_recorded`: the run ended but its outcome
could not be written, e.g. the disk was full, and this closes the turn once writes work
again)."""

FAILURE_REASONS: tuple[FailureReason, ...] = get_args(FailureReason)
"""Every `FailureReason`, in order."""

if TYPE_CHECKING:
    _RecordedReason = FailureReason
else:
    # Stored as a plain string, so a ledger holding any reason (an older or newer release's)
    # still decodes; `encode_event` refuses to write a reason outside FAILURE_REASONS.
    _RecordedReason = str


def is_failure_reason(value: object) -> TypeGuard[FailureReason]:
    """Whether `value` is one of FAILURE_REASONS."""
    return value in FAILURE_REASONS


class Event(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True, gc=False
):
    """Base of every recorded fact; the `type` field carries the stable tag."""


class ToolCall(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One tool the agent called: its tool_use joined with its tool_result."""

    name: str
    input: Any = None
    output: Any = None
    is_error: bool = False
    tool_use_id: str = ""


class SessionCreated(Event, tag="session_created", kw_only=True, frozen=True):
    """A session was opened in a permission mode, optionally inside a study, for an owner
    (an opaque user id the backend passes; None when it passes none)."""

    mode: str = "user"
    study_id: str | None = None
    owner: str | None = None


class SessionResumed(Event, tag="session_resumed", kw_only=True, frozen=True):
    """A known session was resumed (after a restart, or by a client asking for it by id)."""


class StudyContextSet(Event, tag="study_context_set", kw_only=True, frozen=True):
    """The study the session works on was set or cleared."""

    study_id: str | None = None


class ModeSwitched(Event, tag="mode_switched", kw_only=True, frozen=True):
    """The session's permission mode changed."""

    from_mode: str
    to_mode: str


class MessageSent(Event, tag="message_sent", kw_only=True, frozen=True):
    """The user sent a message, with the canvas state as it was sent."""

    turn: int
    text: str
    canvas_state: Any = None


class RunStarted(Event, tag="run_started", kw_only=True, frozen=True):
    """An agent run began for a turn; `argv` is exactly what was run (no environment).

    `host`, `pid` and `process_started_at` (epoch seconds; 0 unknown) name the chatledger
    process that runs it, and `lease_epoch` the session lease it ran under (0: a release
    without leases), so another process can tell a run still in flight from one its owner
    never finished.
    """

    turn: int
    argv: tuple[str, ...] = ()
    prompt_digest: str = ""
    attempt: int = 1
    template_version: int = 0
    history_strategy: str = "prompt"
    resume_agent_session_id: str | None = None
    host: str = ""
    pid: int = 0
    process_started_at: float = 0.0
    lease_epoch: int = 0


class ResponseReceived(Event, tag="response_received", kw_only=True, frozen=True):
    """The agent answered a turn: final text, tool calls, exit code, cost and usage.

    From a live (warm) agent process, `cost_usd` is this turn's share and `process_cost_usd`
    the process's cumulative total; `text_blocks` holds every assistant text block of the
    turn (the final `text` is only the last); `permission_denials` the tool calls the agent
    refused, as it listed them.
    """

    turn: int
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    exit_code: int = 0
    duration: float = 0.0
    cost_usd: float | None = None
    usage: dict[str, Any] | None = None
    agent_session_id: str | None = None
    process_cost_usd: float | None = None
    text_blocks: tuple[str, ...] = ()
    permission_denials: tuple[Any, ...] = ()
    model_usage: tuple[ModelUsage, ...] = ()
    """This turn's tokens and cost per model (claude's `modelUsage`; from a warm process
    the difference against its previous result)."""
    process_model_usage: tuple[ModelUsage, ...] = ()
    """From a warm process: its cumulative `modelUsage` after this turn (else empty)."""
    first_token_seconds: float | None = None
    """Seconds from the turn's RunStarted to the agent's first text (None: no text came,
    or a release that did not measure it)."""


class CanvasModified(Event, tag="canvas_modified", kw_only=True, frozen=True):
    """The agent changed the canvas during a turn (from a tool result or its answer text)."""

    turn: int
    modification: Any = None


class RunFailed(Event, tag="run_failed", kw_only=True, frozen=True):
    """An agent run for a turn ended without an answer; `reason` is one of FAILURE_REASONS."""

    turn: int
    reason: _RecordedReason
    message: str = ""
    stderr_tail: str = ""
    exit_code: int | None = None
    partial_text: str = ""
    """What the agent had already streamed (and the user seen) when the run ended."""
    permission_denials: tuple[Any, ...] = ()
    """The tool calls the agent refused before the run ended, as its result listed them."""
    cost_usd: float | None = None
    usage: dict[str, Any] | None = None
    model_usage: tuple[ModelUsage, ...] = ()
    """What the failed turn still cost, when the agent said (an error or interrupted
    result): spend like an answer's, counted against the caps."""


class AgentProcessStarted(Event, tag="agent_process_started", kw_only=True, frozen=True):
    """A live (warm) agent process was started for the session, ahead of or for `turn`."""

    pid: int
    argv: tuple[str, ...] = ()
    turn: int | None = None
    reason: str = ""
    host: str = ""


class AgentProcessStopped(Event, tag="agent_process_stopped", kw_only=True, frozen=True):
    """The session's live agent process ended: `reason` is idle, evicted, mode_switch,
    passivated, shutdown, crashed or killed; `exit_code` None if it would not die."""

    pid: int
    reason: str
    exit_code: int | None = None
    turns: int = 0
    process_cost_usd: float | None = None


class PermissionRequested(Event, tag="permission_requested", kw_only=True, frozen=True):
    """The agent asked to use a tool outside the allow-list; the caller was asked."""

    turn: int
    request_id: str
    tool: str
    input: Any = None
    tool_use_id: str = ""


class PermissionDecided(Event, tag="permission_decided", kw_only=True, frozen=True):
    """A tool request was answered: by the caller (`decided_by` as given), or denied by
    chatledger when the caller left or took longer than `permission_timeout`."""

    turn: int
    request_id: str
    allow: bool
    message: str = ""
    decided_by: str | None = None


class InterruptRequested(Event, tag="interrupt_requested", kw_only=True, frozen=True):
    """Someone asked to interrupt the session's running `turn` from outside the process that
    runs it (`chatledger interrupt`): that process stops the turn, which then ends with
    RunFailed(cancelled). Recorded without the session's lease."""

    turn: int
    requested_by: str = ""
    host: str = ""
    pid: int = 0


class ColdRunChosen(Event, tag="cold_run_chosen", kw_only=True, frozen=True):
    """Warm sessions are on, but this turn ran as a one-process-per-turn (cold) run:
    `reason` is unsupported, initialize_failed or pool_full."""

    turn: int
    reason: str
    message: str = ""
    argv: tuple[str, ...] = ()
    """What ran instead of RunStarted's live argv (empty: RunStarted's argv is what ran)."""


class AgentSessionLost(Event, tag="agent_session_lost", kw_only=True, frozen=True):
    """The agent no longer had its own session to resume; the turn fell back to prompt history."""

    turn: int
    agent_session_id: str
    message: str = ""


class TranscriptEntriesAppended(Event, tag="transcript_entries_appended", kw_only=True, frozen=True):
    """Entries of the agent's own transcript (claude's JSONL lines, as it wrote them) were kept.

    `project_key`, `agent_session_id` and `subpath` name the transcript the way the Claude
    Agent SDK's `SessionKey` does (`subpath` is None for the main transcript, e.g.
    "subagents/agent-1" for a subagent's). `entries` are the JSON objects verbatim, in order.
    `turn` is the chatledger turn they belong to and `turn_session_id` that turn's chatledger
    session (0 and None when they were not written during one: an Agent SDK session).
    `summary` is the SDK's running session summary after these entries (opaque, kept so
    listing sessions needs no replay), None when it did not change or is not maintained.
    """

    project_key: str
    agent_session_id: str
    subpath: str | None = None
    entries: tuple[Any, ...] = ()
    turn: int = 0
    turn_session_id: str | None = None
    summary: Any = None


class TranscriptDeleted(Event, tag="transcript_deleted", kw_only=True, frozen=True):
    """The agent transcript under a key was deleted: reads no longer return earlier entries.

    The entries stay in the log (so the hash chains still verify) until redaction removes
    their content; `reason` says who or what asked for the deletion.
    """

    project_key: str
    agent_session_id: str
    subpath: str | None = None
    reason: str = ""


class TranscriptRestored(Event, tag="transcript_restored", kw_only=True, frozen=True):
    """Before a turn resumed the agent's own session, its transcript file was written from
    the ledger (it was missing, or held less than the ledger); `entry_count` entries."""

    turn: int
    agent_session_id: str
    project_key: str
    entry_count: int = 0
    reason: str = ""


class SessionExpired(Event, tag="session_expired", kw_only=True, frozen=True):
    """The session was closed for good after being idle past the expiry age."""

    reason: str = "idle"
    idle_seconds: float = 0.0


class SessionTitled(Event, tag="session_titled", kw_only=True, frozen=True):
    """The session's title was set (`source`: "caller", or "first_message" when it was taken
    from the first message by the `auto_title` setting); an empty title clears it."""

    title: str = ""
    source: str = "caller"


class SessionTagged(Event, tag="session_tagged", kw_only=True, frozen=True):
    """Tags were added to and removed from the session."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


class SessionArchived(Event, tag="session_archived", kw_only=True, frozen=True):
    """The session was archived: it is left out of listings unless they ask for archived ones."""


class SessionUnarchived(Event, tag="session_unarchived", kw_only=True, frozen=True):
    """The session was taken out of the archive."""


class BudgetSet(Event, tag="budget_set", kw_only=True, frozen=True):
    """A spend cap was set: USD and tokens (None: no cap of that kind). On a session's stream
    it caps that session; on an owner's budget stream (`owner` set) it caps the owner."""

    owner: str | None = None
    usd: float | None = None
    tokens: int | None = None


class TurnRefused(Event, tag="turn_refused", kw_only=True, frozen=True):
    """A turn was refused before it started (no message was recorded for it); `reason` is
    "budget_exceeded", `scope` is "session" or "owner", and the spend, the reservations of
    turns in flight and the cap that refused it."""

    reason: str = "budget_exceeded"
    scope: str = "session"
    message: str = ""
    text_digest: str = ""
    spent_usd: float = 0.0
    spent_tokens: int = 0
    cap_usd: float | None = None
    cap_tokens: int | None = None
    turns_in_flight: int = 0
    """The owner's turns running in other sessions when this one was refused."""
    reserved_usd: float = 0.0
    reserved_tokens: int = 0
    """What those turns in flight were counted for (see spend/caps.py)."""


class ModelUsage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One model's tokens and cost in a turn (or over a warm process), from claude's
    `modelUsage`: input, output, cache writes and cache reads."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        """Input, output and both kinds of cache tokens."""
        return (self.input_tokens + self.output_tokens + self.cache_creation_input_tokens
                + self.cache_read_input_tokens)


class TranscriptReseeded(Event, tag="transcript_reseeded", kw_only=True, frozen=True):
    """Before `turn`, a live agent process resumed the agent's session from a transcript
    that lacked recorded turns (`missing_turns`, lost in the agent's flush window), so
    they were given back to it: `method` "prompt" (put before the message; the prompt sent
    has `prompt_digest`)."""

    turn: int
    agent_session_id: str
    missing_turns: tuple[int, ...] = ()
    method: str = "prompt"
    prompt_digest: str = ""


class ForkedFrom(Event, tag="forked_from", kw_only=True, frozen=True):
    """This session was forked from another one: the first record of a fork, followed by
    copies of the parent's events up to and including `parent_version`.

    `parent_hash` is the hex hash of the parent's record at that version (at global
    position `parent_position`), so `verify` can tell when the parent's history changed
    since. `agent_session_id` is the parent's agent session that the fork's first turn
    resumes with `--fork-session` (the resume strategy), None when it cannot (then the
    fork sends prompt history); `agent_note` says why.
    """

    parent_session_id: str
    parent_version: int
    parent_hash: str
    parent_position: int = 0
    agent_session_id: str | None = None
    agent_note: str = ""


class HeadCheckpointed(Event, tag="head_checkpointed", kw_only=True, frozen=True):
    """The ledger's head was signed and checkpointed (on demand or periodically), on the
    reserved checkpoint stream: the head's `position` and `hash`, when it was signed, the
    key's fingerprint and public key (base64), and the Ed25519 signature (base64) of the
    signed head; `trigger` is "on_demand" or "periodic"."""

    position: int
    hash: str
    signed_at: str
    key: str
    public_key: str
    signature: str
    trigger: str = "on_demand"


class Redacted(Event, tag="redacted", kw_only=True, frozen=True):
    """The content of an earlier event of this session (`version`, at log `position`, a
    `event_type`) was removed: its salt and content are gone from the record, its
    `commitment` (BLAKE2b-256 of the content, keyed with the removed salt) stays in the hash
    chain. `redacted_by` is who asked (as given), `reason` why; when is the envelope's time."""

    version: int
    position: int = 0
    event_type: str = ""
    commitment: bytes = b""
    reason: str = ""
    redacted_by: str | None = None


AnyEvent = (
    SessionCreated
    | SessionResumed
    | StudyContextSet
    | ModeSwitched
    | MessageSent
    | RunStarted
    | ResponseReceived
    | CanvasModified
    | RunFailed
    | AgentSessionLost
    | SessionExpired
    | TranscriptEntriesAppended
    | TranscriptDeleted
    | TranscriptRestored
    | SessionTitled
    | SessionTagged
    | SessionArchived
    | SessionUnarchived
    | BudgetSet
    | TurnRefused
    | AgentProcessStarted
    | AgentProcessStopped
    | ColdRunChosen
    | PermissionRequested
    | PermissionDecided
    | InterruptRequested
    | TranscriptReseeded
    | ForkedFrom
    | HeadCheckpointed
    | Redacted
)
"""The tagged union of every event this release knows."""

EVENT_TYPES: tuple[type[Event], ...] = AnyEvent.__args__

TAGS: dict[str, type[Event]] = {str(cls.__struct_config__.tag): cls for cls in EVENT_TYPES}
"""Stable tag -> event class."""


def tag_of(event: Event | UnknownEvent) -> str:
    """The stable tag an event is stored under."""
    if isinstance(event, UnknownEvent):
        return event.type
    return str(event.__struct_config__.tag)


class UnknownEvent(msgspec.Struct, frozen=True, gc=False):
    """An event whose tag this release does not know (written by a newer one), kept verbatim.

    `raw` holds the exact stored bytes, so re-encoding it writes the same bytes back.
    """

    type: str
    fields: dict[str, Any]
    raw: bytes


EventT = TypeVar("EventT")


class Envelope(msgspec.Struct, Generic[EventT], frozen=True, array_like=True, gc=False):
    """A record as stored: its place in the log and in its session, time, schema and hash links.

    Declared once for both shapes of a record: `Recorded` (the event decoded) and
    `StoredEnvelope` (`Envelope[msgspec.Raw]`: the event left encoded, to write and to
    check). Stored as a MessagePack array (the envelope shape is ours and versioned by
    `schema_version`; the event inside stays a tagged map, which evolves additively).
    """

    position: int
    session_id: str
    version: int
    recorded_at: datetime
    schema_version: int
    prev_session_hash: bytes
    prev_log_hash: bytes
    event: EventT


if TYPE_CHECKING:  # an event of the union, or an UnknownEvent (typed loosely, as before)
    _DecodedEnvelope = Envelope[Any]
else:  # msgspec decodes the tagged union; the codec puts an UnknownEvent there itself
    _DecodedEnvelope = Envelope[AnyEvent]


class Recorded(_DecodedEnvelope, frozen=True, array_like=True, gc=False):
    """An event as stored, decoded: the envelope's fields with the event as a struct."""
