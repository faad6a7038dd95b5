"""Tool approvals: the agent's `can_use_tool` requests put to the caller, and their answers.

With `tool_approvals` on, a user-mode agent runs with `--permission-prompt-tool stdio`, warm
(the live process) or cold (a run whose stdin stays open until its result): claude's own
rules still decide, and only what it would refuse is asked. The desk records
`PermissionRequested`, hands the caller a `permission_request` update and keeps the request
until `decide` (the caller's answer), `abandon` (the caller left: deny) or
`permission_timeout` (deny; 0 waits as long as the caller stays) records
`PermissionDecided` and answers the agent. While a request waits, its turn's deadline is
paused (the live process or the cold run adds the wait to it). Thread-safe; it appends through the
runtime's out-of-turn recorder and never asks an actor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..agent.control import PermissionAnswerer
from ..events import Event, PermissionDecided, PermissionRequested
from .updates import PermissionRequestUpdate

logger = logging.getLogger(__name__)

Record = Callable[[str, Sequence[Event]], None]


@dataclass
class _Pending:
    session_id: str
    turn: int
    agent: PermissionAnswerer
    asked_at: float
    tool_input: Any = None
    """What the agent asked to run: sent back on an allow that changes nothing, as the
    control protocol's `updatedInput` (an empty one may be read as "no arguments")."""


class PermissionDesk:
    """Open tool requests by (session, request id)."""

    def __init__(self, record: Record, timeout: float) -> None:
        self.record = record
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._closed = threading.Event()
        if timeout > 0:
            threading.Thread(target=self._expire_periodically, name="chatledger-permissions",
                             daemon=True).start()

    def request(self, session_id: str, turn: int, agent: PermissionAnswerer,
                message: dict[str, Any]) -> PermissionRequestUpdate:
        """Record the agent's request and keep it open; the update for the caller."""
        request = message.get("request") or {}
        request_id = str(message.get("request_id"))
        tool = str(request.get("tool_name") or "")
        self.record(session_id, [PermissionRequested(
            turn=turn, request_id=request_id, tool=tool, input=request.get("input"),
            tool_use_id=str(request.get("tool_use_id") or ""))])
        with self._lock:
            self._pending[(session_id, request_id)] = _Pending(
                session_id, turn, agent, time.monotonic(), request.get("input"))
        return PermissionRequestUpdate(request_id=request_id, tool=tool,
                                       input=request.get("input"))

    def decide(self, session_id: str, request_id: str, allow: bool, *,
               message: str | None = None, decided_by: str | None = None,
               updated_input: Any = None) -> bool:
        """Answer an open request (recorded, then told to the agent); False if none is open."""
        with self._lock:
            pending = self._pending.pop((session_id, request_id), None)
        if pending is None:
            return False
        text = message or ("" if allow else "denied by the user")
        self.record(session_id, [PermissionDecided(
            turn=pending.turn, request_id=request_id, allow=allow, message=text,
            decided_by=decided_by)])
        if allow and updated_input is None and isinstance(pending.tool_input, dict):
            updated_input = pending.tool_input
        pending.agent.answer_permission(request_id, allow, message=text,
                                        updated_input=updated_input)
        return True

    def open_requests(self, session_id: str) -> list[str]:
        """The ids of the session's requests waiting for an answer."""
        with self._lock:
            return [rid for (sid, rid) in self._pending if sid == session_id]

    def abandon(self, session_id: str, why: str = "the caller left before deciding") -> int:
        """Deny every open request of the session (its caller went away); how many."""
        requests = self.open_requests(session_id)
        for request_id in requests:
            self.decide(session_id, request_id, False, message=why, decided_by="chatledger")
        return len(requests)

    def abandon_all(self, why: str) -> int:
        """Deny every open request of every session (shutting down); how many."""
        with self._lock:
            sessions = {session_id for session_id, _ in self._pending}
        return sum(self.abandon(session_id, why) for session_id in sessions)

    def _expire_periodically(self) -> None:
        while not self._closed.wait(min(1.0, self.timeout / 4)):
            now = time.monotonic()
            with self._lock:
                late = [key for key, p in self._pending.items()
                        if now - p.asked_at >= self.timeout]
            for session_id, request_id in late:
                try:
                    self.decide(session_id, request_id, False, decided_by="chatledger",
                                message=f"no decision within {self.timeout:g} s")
                except Exception:
                    logger.exception("could not deny an expired tool request")

    def close(self) -> None:
        """Stop the expiry timer (open requests die with their agents)."""
        self._closed.set()
