"""The messages chatledger's actors exchange, and the shapes a turn streams to its caller.

Commands are imperative (`SendMessage`); reports are past tense (`RunCompleted`). Nothing here
acts: these are plain frozen dataclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..agent import CancelSwitch, RunOutcome

TurnSink = Callable[[dict[str, Any]], None]
"""Receives a turn's updates, in the old manager's dict shapes, on a worker or actor thread:
`canvas_modification`, `text_delta` (when asked), `text`, `error`, then `done`."""


# -- commands to a SessionActor (asked by the runtime) ------------------------------------


@dataclass(frozen=True)
class CreateSession:
    """Open a new session in a mode and study."""

    mode: str = "user"
    study_id: str | None = None


@dataclass(frozen=True)
class ResumeSession:
    """Resume a session, keeping its mode and study unless new ones are given."""

    mode: str | None = None
    study_id: str | None = None
    change_study: bool = False


@dataclass(frozen=True)
class SwitchMode:
    """Change the session's permission mode."""

    mode: str


@dataclass(frozen=True)
class SetStudy:
    """Set or clear the study the session works on."""

    study_id: str | None


@dataclass(frozen=True)
class SendMessage:
    """Queue a turn: the message, its canvas state, and where to stream its updates."""

    text: str
    canvas_state: Any
    sink: TurnSink
    ticket: int
    stream_deltas: bool = False


@dataclass(frozen=True)
class CancelTurn:
    """Cancel a queued or running turn by its ticket."""

    ticket: int
    reason: str = "cancelled"


@dataclass(frozen=True)
class GetInfo:
    """Ask for the session's info."""


@dataclass(frozen=True)
class GetHistory:
    """Ask for the session's history."""


@dataclass(frozen=True)
class ExpireSession:
    """Close the session for good (idle past the expiry age)."""

    reason: str
    idle_seconds: float


@dataclass(frozen=True)
class GetStatus:
    """Ask whether the session has a turn queued or running (for passivation)."""


# -- reports ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunCompleted:
    """An agent run ended (on a pool thread); routed to the session's current actor."""

    session_id: str
    ticket: RunTicket
    outcome: RunOutcome
    streamed_modifications: tuple[Any, ...] = ()


@dataclass(frozen=True)
class SessionActivity:
    """A session actor went busy or idle (told to the supervisor)."""

    session_id: str
    busy: bool
    at: float


@dataclass(frozen=True)
class SessionCrashed:
    """A session actor died of an unexpected error (told to the supervisor)."""

    session_id: str
    error: str


# -- commands to the Supervisor ----------------------------------------------------------


@dataclass(frozen=True)
class Activate:
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
class Sweep:
    """Passivate idle sessions and expire old ones. A caller that waits for the expiries
    (read-your-own-writes) passes a list: the supervisor adds one future per live expiry."""

    now: float | None = None
    expiries: list[Any] | None = None


@dataclass(frozen=True)
class Passivate:
    """Stop a session's actor now if it is idle (for tests and the CLI)."""

    session_id: str


@dataclass(frozen=True)
class LiveSessions:
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
    started: bool = False
