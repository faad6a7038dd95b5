"""Checks made before a command reaches a session: a turn's size, power mode as root.

A message or canvas state of hundreds of megabytes would be copied into the prompt, the
ledger and the agent's stdin many times over; refusing it early costs one measurement.
claude refuses to skip its permission checks as root unless IS_SANDBOX=1 is set, so a
power-mode switch that could never run a turn is refused when it is made. This module only
measures and refuses; it records nothing.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from ..config import Config
from ..errors import InvalidCommandError


def check_turn_size(config: Config, text: Any, canvas_state: Any) -> None:
    """Refuse a message or canvas state larger than `max_message_bytes` / `max_canvas_bytes`
    (in UTF-8 / JSON bytes); other problems with them are checked by the session."""
    if isinstance(text, str) and len(text) > config.max_message_bytes // 4:
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size > config.max_message_bytes:
            raise InvalidCommandError(
                f"the message is {size} bytes, over the limit of {config.max_message_bytes} "
                "(setting 'max_message_bytes', CHATLEDGER_MAX_MESSAGE_BYTES): send it in "
                "parts, or raise the limit"
            )
    if canvas_state is None:
        return
    try:
        size = len(msgspec.json.encode(canvas_state))
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError):
        return  # not storable at all: the session says why
    if size > config.max_canvas_bytes:
        raise InvalidCommandError(
            f"the canvas state is {size} bytes of JSON, over the limit of "
            f"{config.max_canvas_bytes} (setting 'max_canvas_bytes', "
            "CHATLEDGER_MAX_CANVAS_BYTES): send a smaller canvas, or raise the limit"
        )


def check_power_mode_runs(config: Config) -> None:
    """Refuse power mode when its turns would fail: claude as root without IS_SANDBOX=1."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    if not config.agent_command or os.path.basename(config.agent_command[0]) != "claude":
        return
    sandbox = config.agent_env.get("IS_SANDBOX", os.environ.get("IS_SANDBOX"))
    if sandbox == "1":
        return
    raise InvalidCommandError(
        "power mode cannot run as root: claude refuses --dangerously-skip-permissions for "
        "root unless IS_SANDBOX=1 is set for it; run the backend as another user, or set "
        "IS_SANDBOX=1 (in its environment, or agent_env) if it is a sandbox"
    )
