"""What a turn streams to its caller, as typed structs: deltas, canvas changes, text, errors, done.

A turn's caller receives, in order: `TextDeltaUpdate`* (when asked for) and
`CanvasModificationUpdate`* as the agent works, then `TextUpdate` (the answer) or
`ErrorUpdate`, and always one `TurnDone` last. Each struct carries the old manager's dict tag
in its `type` field, and its fields are the old dict's keys in their order, so it encodes as
JSON to exactly the old dict; only `manager.py` turns them into dicts, and only `cli.py` into
lines. This module decides nothing and does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from ..events import FailureReason, ToolCall

TurnEndReason = FailureReason | Literal["ledger_error", "budget_exceeded", "session_busy"]
"""Why a turn ended without an answer: a recorded run failure, `ledger_error` when the
answer could not be recorded (so nothing says so in the ledger), `budget_exceeded` when a
spend cap refused the turn before it started (recorded as TurnRefused), or `session_busy`
when the session stayed busy in another process past `turn_wait_timeout` (nothing was
recorded)."""


class TurnUpdate(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every update a turn streams to its caller; `type` is the old dict's tag."""


class TextDeltaUpdate(TurnUpdate, tag="text_delta", frozen=True, kw_only=True):
    """A piece of the answer as the agent writes it (only when the caller asked for deltas)."""

    content: str


class ToolCallUpdate(TurnUpdate, tag="tool_call", frozen=True, kw_only=True):
    """A tool call the agent completed (only when the caller asked for deltas): live
    progress for a streaming caller such as the CLI."""

    name: str
    is_error: bool = False


class TextResetUpdate(TurnUpdate, tag="text_reset", frozen=True, kw_only=True):
    """The deltas streamed so far were not the answer (the agent's stream broke and it
    retried without streaming): `content` is what it really said (only with deltas)."""

    content: str


class PermissionRequestUpdate(TurnUpdate, tag="permission_request", frozen=True, kw_only=True):
    """The agent asks to use a tool outside the allow-list: answer with `decide_permission`
    (the turn waits; leaving the turn denies)."""

    request_id: str
    tool: str
    input: Any = None


class CanvasModificationUpdate(TurnUpdate, tag="canvas_modification", frozen=True, kw_only=True):
    """A canvas change the agent made (streamed as it happens, each one once per turn)."""

    modification: Any


class TextUpdate(TurnUpdate, tag="text", frozen=True, kw_only=True):
    """The agent's whole answer, once the turn is recorded."""

    content: str


class ErrorUpdate(TurnUpdate, tag="error", frozen=True, kw_only=True):
    """Why the turn failed, in words; a `TurnDone` with `ok=False` follows."""

    message: str


class TurnDone(TurnUpdate, tag="done", frozen=True, kw_only=True):
    """The last update of every turn. `cost_usd` and `duration` are UNSET (and left out of
    the encoded dict, as the old manager did) when no agent run ended: the turn was
    cancelled while queued, could not start, or could not be recorded."""

    tool_calls: tuple[ToolCall, ...] = ()
    turn: int | None = None
    ok: bool = False
    reason: TurnEndReason | None = None
    cost_usd: float | None | UnsetType = UNSET
    duration: float | UnsetType = UNSET


class TurnWaiting(TurnUpdate, tag="waiting", frozen=True, kw_only=True):
    """The session runs a turn in another process: this turn waits for it (sent once,
    before the turn starts; not one of the old manager's dicts, so `manager.py` drops it)."""

    owner: str


AnyTurnUpdate = (
    TextDeltaUpdate | TextResetUpdate | ToolCallUpdate | PermissionRequestUpdate
    | CanvasModificationUpdate | TextUpdate | ErrorUpdate | TurnDone | TurnWaiting
)
"""Every update a turn can stream."""

TurnSink = Callable[[AnyTurnUpdate], None]
"""Receives a turn's updates, on a run-pool or actor thread: `canvas_modification`*,
`text_delta`* and `tool_call`* (when asked), `text` or `error`, then `done`."""


def turn_failed(
    message: str, reason: TurnEndReason, turn: int | None = None
) -> tuple[ErrorUpdate, TurnDone]:
    """The two updates that end a turn without an answer: its error, then its `done`."""
    return ErrorUpdate(message=message), TurnDone(turn=turn, ok=False, reason=reason)
