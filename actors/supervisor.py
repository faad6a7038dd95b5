"""Supervisor: the registry of live session actors, their activation, passivation and expiry.

Sessions are virtual actors (as in Orleans): a session's actor is started from the log on
first use, stopped after `idle_timeout` without activity, and started again when next used.
At most `max_live_sessions` actors live at once: activating one more passivates the least
recently used idle ones, so a backend's memory does not grow with the sessions it holds.
Sessions idle past `expiry_age` get `SessionExpired` (the rule is `expiry.expiry_due`). A
session actor that crashed drops out of the registry and is started afresh from the log on
next use, or at once when a run of its completes. The supervisor never asks a session actor
anything: it tells, or stops them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import pykka

from ..errors import ConcurrencyError, UnknownSessionError
from ..events import SessionExpired
from .expiry import expiry_due
from .messages import (
    Activate,
    ExpireSession,
    LiveSessions,
    Passivate,
    RouteCompletion,
    RunCompleted,
    RunTicket,
    Sweep,
)
from .session import SessionActor, SessionServices

logger = logging.getLogger(__name__)


SessionRef = pykka.ActorRef[SessionActor]
"""A live session actor."""


@dataclass
class _Entry:
    ref: SessionRef
    last_used: float
    busy: bool = False
    pins: int = 0  # callers between activation and the end of their ask

    @property
    def in_use(self) -> bool:
        return self.busy or self.pins > 0


class SessionRegistry:
    """Live session actors by id, least recently used first; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def get(self, session_id: str) -> SessionRef | None:
        """The live actor ref of a session, or None."""
        with self._lock:
            entry = self._entries.get(session_id)
        if entry is None or not entry.ref.is_alive():
            return None
        return entry.ref

    def pin(self, session_id: str) -> SessionRef | None:
        """The live actor ref of a session (or None), pinned: it is not passivated until
        `unpin`, and it becomes the most recently used."""
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None or not entry.ref.is_alive():
                return None
            entry.pins += 1
            self._entries.move_to_end(session_id)
            return entry.ref

    def unpin(self, session_id: str, ref: SessionRef) -> None:
        """Release a pin taken on `ref` (a no-op if the session has another actor since)."""
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is not None and entry.ref == ref and entry.pins > 0:
                entry.pins -= 1

    def put(self, session_id: str, ref: SessionRef) -> None:
        """Register a newly started actor."""
        with self._lock:
            self._entries[session_id] = _Entry(ref=ref, last_used=time.monotonic())
            self._entries.move_to_end(session_id)

    def touch(self, session_id: str, busy: bool) -> None:
        """Note activity: busy while a turn is queued or running."""
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is not None:
                entry.busy = busy
                entry.last_used = time.monotonic()
                self._entries.move_to_end(session_id)

    def take_if_idle(self, session_id: str) -> SessionRef | None:
        """Remove and return a session's actor if it is alive and nobody uses it, in one
        step (so that no caller can pin it in between), else None."""
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None or entry.in_use or not entry.ref.is_alive():
                return None
            del self._entries[session_id]
            return entry.ref

    def forget(self, session_id: str, ref: SessionRef) -> None:
        """Drop a session's entry if it still belongs to `ref`."""
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is not None and entry.ref == ref:
                del self._entries[session_id]

    def idle(self, older_than: float) -> list[tuple[str, SessionRef]]:
        """Sessions not busy and unused for `older_than` seconds."""
        cutoff = time.monotonic() - older_than
        with self._lock:
            return [
                (session_id, entry.ref)
                for session_id, entry in self._entries.items()
                if not entry.in_use and entry.last_used <= cutoff
            ]

    def least_recently_used(self, count: int, keep: str) -> list[str]:
        """Up to `count` idle sessions, least recently used first, never `keep`."""
        chosen: list[str] = []
        with self._lock:
            for session_id, entry in self._entries.items():
                if len(chosen) >= count:
                    break
                if not entry.in_use and session_id != keep:
                    chosen.append(session_id)
        return chosen

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def in_use(self, session_id: str) -> bool:
        """Whether the session's live actor has a turn queued or running, or a caller."""
        with self._lock:
            entry = self._entries.get(session_id)
            return entry is not None and entry.in_use

    def snapshot(self) -> list[str]:
        """Ids of the sessions with a registered actor."""
        with self._lock:
            return list(self._entries)

    def take_all(self) -> list[SessionRef]:
        """Remove and return every registered actor ref (shutdown)."""
        with self._lock:
            refs = [entry.ref for entry in self._entries.values()]
            self._entries.clear()
        return refs


class Supervisor(pykka.ThreadingActor):
    """Activates, passivates and expires session actors; routes run outcomes to them."""

    use_daemon_thread = True  # a program that never closes chatledger must still exit

    def __init__(self, services: SessionServices, registry: SessionRegistry) -> None:
        super().__init__()
        self.services = services
        self.registry = registry
        self.passivated = 0

    def on_receive(self, message: Any) -> Any:
        """Handle one supervisor message. Runs in the supervisor's own thread."""
        if isinstance(message, Activate):
            return self._activate(message.session_id, must_exist=message.must_exist,
                                  pin=message.pin)
        if isinstance(message, RouteCompletion):
            self._route(message.completion)
            return None
        if isinstance(message, Sweep):
            return self._sweep(message.now, message.expiries)
        if isinstance(message, Passivate):
            return self._passivate(message.session_id)
        if isinstance(message, LiveSessions):
            return self.registry.snapshot()
        raise TypeError(f"Supervisor cannot handle {message!r}")

    def _activate(
        self, session_id: str, *, must_exist: bool, adopt: RunTicket | None = None,
        pin: bool = False,
    ) -> SessionRef:
        ref = self.registry.pin(session_id)
        if ref is None:
            if must_exist and self.services.log.info(session_id) is None:
                raise UnknownSessionError.for_session(session_id)
            ref = SessionActor.start(session_id, self.services, adopt)
            self.registry.put(session_id, ref)
            self.registry.pin(session_id)
            excess = len(self.registry) - self.services.config.max_live_sessions
            if excess > 0:
                for idle_id in self.registry.least_recently_used(excess, keep=session_id):
                    self._passivate(idle_id)
        if not pin:
            self.registry.unpin(session_id, ref)
        return ref

    def _route(self, completion: RunCompleted) -> None:
        ref = self.registry.get(completion.session_id)
        if ref is None:
            ref = self._activate(completion.session_id, must_exist=True, adopt=completion.ticket)
        try:
            ref.tell(completion)
        except pykka.ActorDeadError:
            self.registry.forget(completion.session_id, ref)
            fresh = self._activate(
                completion.session_id, must_exist=True, adopt=completion.ticket
            )
            fresh.tell(completion)

    def _passivate(self, session_id: str) -> bool:
        ref = self.registry.take_if_idle(session_id)
        if ref is None:
            return False
        ref.stop(block=False)
        self.services.remove_session_files(session_id)
        self.passivated += 1
        return True

    def _sweep(self, now: float | None, expiries: list[Any] | None = None) -> dict[str, int]:
        """Passivate idle actors, then expire sessions idle past the expiry age."""
        config = self.services.config
        passivated = 0
        for session_id, _ in self.registry.idle(config.idle_timeout):
            passivated += self._passivate(session_id)
        now = time.time() if now is None else now
        expired = 0
        for info in self.services.log.sessions():
            ref = self.registry.get(info.session_id)
            busy = ref is not None and self.registry.in_use(info.session_id)
            idle = expiry_due(info, now=now, expiry_age=config.expiry_age, busy=busy)
            if idle is None:
                continue
            if ref is not None:  # its actor decides again, on its own state
                expiry = ExpireSession(now=now, expiry_age=config.expiry_age)
                if expiries is None:
                    ref.tell(expiry)
                else:  # the caller waits for the append, not this actor
                    expiries.append(ref.ask(expiry, block=False))
                expired += 1
                continue
            try:
                self.services.log.append(
                    info.session_id,
                    [SessionExpired(reason="idle", idle_seconds=idle)],
                    info.version,
                )
                expired += 1
            except ConcurrencyError as error:  # another process moved it on: next sweep decides
                logger.info("did not expire %s: another process moved it on (%s)",
                            info.session_id, error)
            except Exception:
                logger.exception("could not expire %s", info.session_id)
        return {"passivated": passivated, "expired": expired}
