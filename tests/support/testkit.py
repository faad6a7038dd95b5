"""Helpers the tests share: the stand-in agent's command line, a Ledger with short bounds, a
bounded wait on a condition, and whether a process lives.

Only tests import this module (tests/support is on pytest's pythonpath). Waiting here is
always on a condition with a deadline, never a fixed sleep that orders threads.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chatledger.ledger import Ledger

STANDIN: tuple[str, ...] = (sys.executable, "-m", "chatledger.testing.standin")
"""The argv of the bundled stand-in agent (it speaks claude's protocol)."""

STANDIN_COMMAND_LINE = shlex.join(STANDIN)
"""The stand-in agent as a `CHATLEDGER_AGENT_COMMAND` value."""


def open_ledger(path: Path | str, **settings: Any) -> Ledger:
    """A Ledger at `path` driving the stand-in agent (unless told otherwise), with short
    bounds: a 30 s run timeout and a 0.5 s kill grace."""
    settings.setdefault("agent_command", STANDIN)
    settings.setdefault("timeout", 30)
    settings.setdefault("kill_grace", 0.5)
    return Ledger(str(path), **settings)


def wait_until(condition: Callable[[], Any], timeout: float = 10.0) -> bool:
    """Whether `condition()` holds within `timeout` seconds (it is looked at every 20 ms:
    for conditions no event announces, such as another process's state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False

