"""The warm pool: one live agent process per warm session, at most `max_warm_agents` of them.

With `warm_agents` on, a session's turns go to a long-lived agent process (`agent.live`)
instead of one process per turn. The pool keeps them by session, least recently used first:
a new one beyond the cap evicts the least recently used idle one (stdin EOF), and one idle
for `warm_idle_timeout` is closed by the pool's own timer. A process whose argv would differ
for this turn (a mode switch, other MCP servers) is replaced; one that died is replaced too.
When a turn cannot run warm (the dialect cannot, `initialize` fails, every slot is busy) it
runs cold, as before, and that is recorded. `run` BLOCKS its thread (a run-pool worker);
the events of a turn (process started, stopped, cold run chosen) are returned to the caller
to record with the turn, and the stops that happen outside a turn (eviction, idle,
passivation, shutdown) are recorded through `record`, which appends at the session's
current version. Nothing here decides a turn's prompt or keeps its order: the session actor
does.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..agent import AgentDialect, AgentUpdate, RunOutcome, RunSpec, run_turn
from ..agent.live import LiveAgent, LiveStartError, PermissionHandler
from ..config import Config
from ..events import AgentProcessStarted, AgentProcessStopped, ColdRunChosen, Event
from .permissions import PermissionDesk
from .rehydration import HOST
from .turn import WarmTurn
from .updates import PermissionRequestUpdate

logger = logging.getLogger(__name__)

Record = Callable[[str, Sequence[Event]], None]
"""Appends events to a session at its current version (outside its actor's turn)."""


@dataclass
class _Warm:
    agent: LiveAgent
    identity: tuple[str, ...]
    busy: bool = False


class WarmPool:
    """Live agent processes of warm sessions; thread-safe."""

    def __init__(self, config: Config, dialect: AgentDialect, record: Record) -> None:
        self.config = config
        self.dialect = dialect
        self.record = record
        self.permissions = PermissionDesk(record, config.permission_timeout)
        self._lock = threading.Lock()
        self._agents: OrderedDict[str, _Warm] = OrderedDict()
        self._starting = 0
        self._closed = threading.Event()
        self._timer = threading.Thread(target=self._close_idle_periodically,
                                       name="chatledger-warm-idle", daemon=True)
        self._timer.start()

    # -- turns ------------------------------------------------------------------------------

    def run(self, session_id: str, turn: int, warm: WarmTurn, spec: RunSpec, *, turn_id: str,
            on_update: Callable[[AgentUpdate], None],
            on_request: Callable[[PermissionRequestUpdate], None] | None = None,
            ) -> tuple[RunOutcome, list[Event]]:
        """Run a turn in the session's live process (started if need be), or cold if it
        cannot be warm. BLOCKING. Returns the outcome and the events to record with it."""
        events: list[Event] = []
        entry, reason = self._take(session_id, turn, warm, events)
        if entry is None:
            events.append(ColdRunChosen(turn=turn, reason=reason[0], message=reason[1]))
            cold = dataclasses.replace(spec, argv=warm.cold_argv)
            return run_turn(cold, self.dialect, on_update), events
        on_permission: PermissionHandler | None = None
        if on_request is not None:
            agent = entry.agent

            def on_permission(message: dict[str, object]) -> None:
                on_request(self.permissions.request(session_id, turn, agent, dict(message)))

        try:
            outcome = entry.agent.run_turn(spec, turn_id=turn_id, on_update=on_update,
                                           on_permission=on_permission)
        finally:
            with self._lock:
                entry.busy = False
            # A request still open when its turn ends (the agent died, the runtime is
            # closing) would stay open in the record and in the desk: deny it.
            self.permissions.abandon(session_id, "the turn ended before a decision")
        if not entry.agent.alive:
            code = entry.agent.close()
            self._forget(session_id, entry)
            events.append(self._stopped(entry, "crashed", code))
        return outcome, events

    def _take(self, session_id: str, turn: int, warm: WarmTurn, events: list[Event],
              ) -> tuple[_Warm | None, tuple[str, str]]:
        """The session's live process, marked busy, started if need be; or None and why not."""
        with self._lock:
            entry = self._agents.get(session_id)
            if entry is not None:
                self._agents.move_to_end(session_id)
                entry.busy = True
        if entry is not None:
            if entry.agent.alive and entry.identity == warm.identity:
                return entry, ("", "")
            reason = "mode_switch" if entry.agent.alive else "crashed"
            code = entry.agent.close()
            self._forget(session_id, entry)
            events.append(self._stopped(entry, reason, code))
        if not self._make_room(session_id):
            return None, ("pool_full", f"all {self.config.max_warm_agents} warm agent "
                          "processes are busy")
        agent = LiveAgent(warm.live_argv, self.dialect, env_extras=self.config.agent_env,
                          cwd=self.config.agent_cwd, kill_grace=self.config.kill_grace,
                          timeout=self.config.timeout)
        try:
            agent.start()
        except LiveStartError as error:
            return None, ("initialize_failed", str(error))
        finally:
            with self._lock:
                self._starting -= 1
        entry = _Warm(agent=agent, identity=warm.identity, busy=True)
        with self._lock:
            self._agents[session_id] = entry
        events.append(AgentProcessStarted(pid=agent.pid or 0, argv=warm.live_argv,
                                          turn=turn, reason="turn", host=HOST))
        return entry, ("", "")

    def _make_room(self, session_id: str) -> bool:
        """Reserve a slot for a new process, evicting the least recently used idle one;
        False if every slot is busy."""
        victim: tuple[str, _Warm] | None = None
        with self._lock:
            if len(self._agents) + self._starting >= self.config.max_warm_agents:
                for other, entry in self._agents.items():
                    if not entry.busy and other != session_id:
                        victim = (other, entry)
                        break
                if victim is None:
                    return False
                del self._agents[victim[0]]
            self._starting += 1
        if victim is not None:
            self._close(victim[0], victim[1], "evicted")
        return True

    # -- ends -------------------------------------------------------------------------------

    def _stopped(self, entry: _Warm, reason: str, code: int | None) -> AgentProcessStopped:
        agent = entry.agent
        return AgentProcessStopped(pid=agent.pid or 0, reason=reason, exit_code=code,
                                   turns=agent.turns, process_cost_usd=agent.total_cost_usd)

    def _forget(self, session_id: str, entry: _Warm) -> None:
        with self._lock:
            if self._agents.get(session_id) is entry:
                del self._agents[session_id]

    def _close(self, session_id: str, entry: _Warm, reason: str) -> None:
        """Close a process taken out of the pool and record it on its session."""
        code = entry.agent.close()
        try:
            self.record(session_id, [self._stopped(entry, reason, code)])
        except Exception:
            logger.exception("could not record the stop of %s's agent process", session_id)

    def release(self, session_id: str, reason: str) -> bool:
        """Close the session's live process if it is idle (passivation); whether one was."""
        with self._lock:
            entry = self._agents.get(session_id)
            if entry is None or entry.busy:
                return False
            del self._agents[session_id]
        self._close(session_id, entry, reason)
        return True

    def warm_sessions(self) -> list[str]:
        """The sessions with a live process, least recently used first."""
        with self._lock:
            return list(self._agents)

    def close_idle(self, now: float | None = None) -> int:
        """Close the processes idle for `warm_idle_timeout`; how many were closed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [(sid, entry) for sid, entry in self._agents.items()
                    if not entry.busy
                    and now - entry.agent.last_used >= self.config.warm_idle_timeout]
            for sid, _ in idle:
                del self._agents[sid]
        for sid, entry in idle:
            self._close(sid, entry, "idle")
        return len(idle)

    def _close_idle_periodically(self) -> None:
        interval = min(5.0, max(0.05, self.config.warm_idle_timeout / 4))
        while not self._closed.wait(interval):
            try:
                self.close_idle()
            except Exception:
                logger.exception("closing idle warm agents failed")

    def close_all(self, reason: str = "shutdown") -> None:
        """Close every process (the runtime is closing: no turn runs any more)."""
        self._closed.set()
        self.permissions.close()
        with self._lock:
            entries = list(self._agents.items())
            self._agents.clear()
        for sid, entry in entries:
            self._close(sid, entry, reason)
