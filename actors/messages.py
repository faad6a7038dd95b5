"""The messages chatledger's actors exchange (the updates a turn streams are in `updates.py`).

Commands are imperative (`SendMessage`); reports are past tense (`RunCompleted`). Nothing here
acts: these are plain frozen dataclasses. A message that is asked (not told) derives from
`Ask[Answer]`, so `ask(ref, message)` is typed by what the actor answers, without a cast at
the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import pykka

from ..agent import CancelSwitch, RunOutcome
from ..events import Event, SessionInfo
from ..telemetry.otel import NO_TRACE, TurnTrace
from .updates import TurnSink

if TYPE_CHECKING:  # session.py imports this module; the name is only in a string below
    from .session import SessionActor  # noqa: F401

Answer = TypeVar("Answer")


class Ask(Generic[Answer]):
    """A message an actor answers with an `Answer` (see `ask`)."""


def ask(ref: pykka.ActorRef[Any], message: Ask[Answer], timeout: float) -> Answer:
    """Ask the actor behind `ref` and wait at most `timeout` seconds for its answer. Blocks:
    never call it from inside an actor."""
    return cast(Answer, ref.ask(message, timeout=timeout))


# -- commands to a SessionActor (asked by the runtime) ------------------------------------


@dataclass(frozen=True)
class CreateSession(Ask[SessionInfo]):
    """Open a new session in a mode and study, for an owner and with a title (if given)."""

    mode: str = "user"
    study_id: str | None = None
    owner: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class ResumeSession(Ask[SessionInfo]):
    """Resume a session, keeping its mode and study unless new ones are given."""

    mode: str | None = None
    study_id: str | None = None
    change_study: bool = False


@dataclass(frozen=True)
class SwitchMode(Ask[SessionInfo]):
    """Change the session's permission mode."""

    mode: str


@dataclass(frozen=True)
class SetStudy(Ask[SessionInfo]):
    """Set or clear the study the session works on."""

    study_id: str | None


@dataclass(frozen=True)
class Annotate(Ask[SessionInfo]):
    """Record a change of the session's labels (title, tags, archive, caps): `decide` returns
    its events from the session's current info (see `annotations.py`)."""

    decide: Callable[[SessionInfo], list[Event]]


@dataclass(frozen=True)
class SendMessage(Ask[int]):
    """Queue a turn: the message, its canvas state, and where to stream its updates."""

    text: str
    canvas_state: Any
    sink: TurnSink
    ticket: int
    stream_deltas: bool = False
    queued_at_ns: int = field(default_factory=time.time_ns)
    asked_at: float = field(default_factory=time.monotonic)
    """When it was asked for (monotonic), to bound its wait for another process."""


@dataclass(frozen=True)
class CancelTurn(Ask[bool]):
    """Cancel a queued or running turn by its ticket."""

    ticket: int


@dataclass(frozen=True)
class GetInfo(Ask[SessionInfo]):
    """Ask for the session's info."""


@dataclass(frozen=True)
class ExpireSession:
    """Close the session for good if, at `now` (epoch seconds), it has been idle for
    `expiry_age` seconds (the actor decides on its own state, by `expiry.expiry_due`)."""

    now: float
    expiry_age: float
    reason: str = "idle"


@dataclass(frozen=True)
class RetryTurns:
    """Look again whether the session's queued turns can start (another process held it)."""


@dataclass(frozen=True)
class LeaseLost:
    """The runtime lost this session's lease of `epoch` (another process took it over)."""

    epoch: int


@dataclass(frozen=True)
class RetryRecording:
    """Try again to close a turn whose outcome could not be recorded."""


# -- reports ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunCompleted:
    """An agent run ended (on a pool thread); routed to the session's current actor."""

    session_id: str
    ticket: RunTicket
    outcome: RunOutcome
    streamed_modifications: tuple[Any, ...] = ()
    recorded_first: tuple[Event, ...] = ()
    """Events the run job asks the session to record before the outcome's own (a
    `TranscriptRestored`)."""
    process_events: tuple[Any, ...] = ()  # a warm run's process events, recorded first


# -- commands to the Supervisor ----------------------------------------------------------


@dataclass(frozen=True)
class Activate(Ask["pykka.ActorRef[SessionActor]"]):
    """Return the live actor of a session, starting it from the log if need be; `pin` keeps
    it from being passivated until the caller unpins it in the registry."""

    session_id: str
    must_exist: bool = True
    pin: bool = False


@dataclass(frozen=True)
class RouteCompletion:
    """Deliver a run's outcome to its session, activating the session if it is not live."""

    completion: RunCompleted


@dataclass(frozen=True)
class Sweep(Ask[dict[str, int]]):
    """Passivate idle sessions and expire old ones. A caller that waits for the expiries
    (read-your-own-writes) passes a list: the supervisor adds one future per live expiry."""

    now: float | None = None
    expiries: list[Any] | None = None


@dataclass(frozen=True)
class Passivate(Ask[bool]):
    """Stop a session's actor now if it is idle (for tests and the CLI)."""

    session_id: str


@dataclass(frozen=True)
class LiveSessions(Ask[list[str]]):
    """Ask for the ids of the sessions with a live actor."""


@dataclass
class RunTicket:
    """A queued or running agent run: its command (and so its caller's sink) and its cancel
    switch. It travels with the run, so a restarted actor can still answer the caller."""

    session_id: str
    ticket: int
    turn: int
    command: SendMessage
    cancel: CancelSwitch = field(default_factory=CancelSwitch)
    trace: TurnTrace = NO_TRACE
    since_version: int = 0
    """The session's version before the turn's first `RunStarted` (0: not known): what asks
    to interrupt this turn is recorded after it."""
