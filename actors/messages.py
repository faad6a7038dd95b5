"""The messages chatledger's actors exchange (the updates a turn streams are in `updates.py`).

Commands are imperative (`SendMessage`); reports are past tense (`RunCompleted`). Nothing here
acts: these are plain frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..agent import CancelSwitch, RunOutcome
from .updates import TurnSink

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


@dataclass(frozen=True)
class GetInfo:
    """Ask for the session's info."""


@dataclass(frozen=True)
class ExpireSession:
    """Close the session for good if, at `now` (epoch seconds), it has been idle for
    `expiry_age` seconds (the actor decides on its own state, by `expiry.expiry_due`)."""

    now: float
    expiry_age: float
    reason: str = "idle"


# -- reports ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunCompleted:
    """An agent run ended (on a pool thread); routed to the session's current actor."""

    session_id: str
    ticket: RunTicket
    outcome: RunOutcome
    streamed_modifications: tuple[Any, ...] = ()


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
    """Passivate idle sessions and expire old ones."""

    now: float | None = None


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
