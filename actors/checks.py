"""The checks a session command passes before anything is recorded: text that is valid
Unicode, a canvas state the ledger can store, a known mode this deployment allows, a session
that exists and is open. Each raises a ChatledgerError whose message says what to do; none
does I/O.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..errors import InvalidCommandError, UnknownSessionError
from ..events import MODES, STATUS_EXPIRED, SessionInfo
from ..events.codec import ENCODE_ERRORS


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


def check_open(info: SessionInfo) -> None:
    """Refuse a command to a session the ledger does not hold, or one that expired."""
    if info.version == 0:
        raise UnknownSessionError.for_session(info.session_id)
    if info.status == STATUS_EXPIRED:
        raise InvalidCommandError(f"session {info.session_id} expired; resume it to go on")


def check_mode(mode: str, *, allow_power_mode: bool) -> None:
    """Refuse a mode that is unknown, or power mode where this deployment does not allow it."""
    if mode not in MODES:
        raise InvalidCommandError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "power" and not allow_power_mode:
        raise InvalidCommandError(
            "power mode is not allowed by this deployment (CHATLEDGER_ALLOW_POWER_MODE)"
        )


def check_turn_allowed(info: SessionInfo, *, allow_power_mode: bool) -> None:
    """Refuse a turn in power mode when this deployment does not allow power mode (the
    session may have been switched to it by a process, or a release, that did)."""
    if info.mode == "power" and not allow_power_mode:
        raise InvalidCommandError(
            f"session {info.session_id} is in power mode, which this deployment does not "
            "allow (CHATLEDGER_ALLOW_POWER_MODE): switch it to user mode to go on"
        )
