"""The warm pool: one live agent process per warm session, at most `max_warm_agents` of them.

With `warm_agents` on, a session's turns go to a long-lived agent process (`agent.live`)
instead of one process per turn. The pool keeps them by session, least recently used first:
a new one beyond the cap evicts the least recently used idle one (stdin EOF), and one idle
for `warm_idle_timeout` is closed by the pool's own timer. A process whose argv would differ
for this turn (a mode switch, other MCP servers) is replaced; one that died is replaced too.
`spawn_ahead` starts a session's process before it is needed (the session actor asks on
activation and after each turn), on a thread of its own, only into a free slot (it never
evicts); a turn that finds its process still starting waits for it. A process started with
`--resume` is checked before its first turn: if the agent's transcript lacks recorded turns
(a SIGKILL in claude's flush window after `result`), they are put back into that turn's
prompt and `TranscriptReseeded` is recorded (`actors/reseed.py`). When a turn cannot run
warm (the dialect cannot, `initialize` fails, every slot is busy) it runs cold, as before,
and that is recorded. `run` BLOCKS its thread (a run-pool worker); the events of a turn
(process started, stopped, re-seeded, cold run chosen) are returned to the caller to record
with the turn, and the stops that happen outside a turn (eviction, idle, passivation,
shutdown) are recorded through `record`, which appends at the session's current version
(with the start of a process spawned ahead that no turn used). Nothing here decides a
turn's prompt beyond the re-seed or keeps its order: the session actor does.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..agent import AgentDialect, AgentUpdate, RunOutcome, RunSpec, run_turn
from ..agent.live import INITIALIZE_TIMEOUT, LiveAgent, LiveStartError, PermissionHandler
from ..config import Config
from ..events import (
    AgentProcessStarted,
    AgentProcessStopped,
    ColdRunChosen,
    Event,
    TranscriptReseeded,
)
from ..sdk_store.keys import TranscriptKey
from ..transcript import transcript_file
from ..transcript.reseed import missing_turns
from .permissions import PermissionDesk
from .rehydration import HOST
from .transcripts import agent_places
from .turn import WarmTurn
from .updates import PermissionRequestUpdate

logger = logging.getLogger(__name__)

Record = Callable[[str, Sequence[Event]], None]
"""Appends events to a session at its current version (outside its actor's turn)."""

START_WAIT = INITIALIZE_TIMEOUT + 10.0
"""How long a turn waits for its process spawned ahead to answer `initialize`."""


@dataclass
class _Warm:
    agent: LiveAgent
    identity: tuple[str, ...]
    resume_id: str | None = None
    busy: bool = False
    starting: bool = False
    ready: threading.Event = field(default_factory=threading.Event)
    unrecorded_start: AgentProcessStarted | None = None  # spawned ahead, no turn yet
    removed_as: str | None = None  # taken out of the pool while starting: close it so


def _resume_id(argv: Sequence[str]) -> str | None:
    for word in argv:
        if word.startswith("--resume="):
            return word[len("--resume="):]
    return None


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
        self._spawners: set[threading.Thread] = set()
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
            events.append(ColdRunChosen(turn=turn, reason=reason[0], message=reason[1],
                                        argv=tuple(warm.cold_argv)))
            cold = dataclasses.replace(spec, argv=warm.cold_argv)
            ask = None if on_request is None else (lambda message, answerer: on_request(
                self.permissions.request(session_id, turn, answerer, dict(message))))
            return run_turn(cold, self.dialect, on_update, ask, turn_id), events
        if entry.agent.turns == 0 and entry.resume_id:
            spec = self._reseeded(turn, entry.resume_id, warm, spec, events)
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

    def _reseeded(self, turn: int, resumed: str, warm: WarmTurn, spec: RunSpec,
                  events: list[Event]) -> RunSpec:
        """The turn's spec, with the recorded turns that the transcript of `resumed` (the
        agent session the process was started with) lacks put back into its prompt
        (recorded as TranscriptReseeded). BLOCKING (reads the file)."""
        if warm.reseed is None or not self.dialect.resumes_from_transcript_file:
            return spec
        reseed = warm.reseed()
        if reseed is None:
            return spec
        try:
            projects, project_key = agent_places(self.config.agent_env, self.config.agent_cwd)
            path = transcript_file(projects, TranscriptKey(project_key, resumed))
            missing = missing_turns(path, reseed.marks)
        except (OSError, ValueError):
            logger.exception("could not check the transcript of %s", resumed)
            return spec
        if not missing:
            return spec
        lost = reseed.turns[-missing:]
        prompt = reseed.prompt_with(lost)
        logger.warning("agent session %s resumed without turn(s) %s: re-seeded in the prompt",
                       resumed, [recorded.turn for recorded in lost])
        events.append(TranscriptReseeded(
            turn=turn, agent_session_id=resumed,
            missing_turns=tuple(recorded.turn for recorded in lost), method="prompt",
            prompt_digest=prompt.digest))
        return dataclasses.replace(spec, prompt=prompt.text)

    def _claim(self, session_id: str) -> _Warm | None:
        """The session's entry, marked busy (after waiting for one still starting)."""
        deadline = time.monotonic() + START_WAIT
        while True:
            with self._lock:
                entry = self._agents.get(session_id)
                if entry is None:
                    return None
                self._agents.move_to_end(session_id)
                if not entry.starting:
                    entry.busy = True
                    return entry
            if not entry.ready.wait(max(0.0, deadline - time.monotonic())):
                return None

    def _take(self, session_id: str, turn: int, warm: WarmTurn, events: list[Event],
              ) -> tuple[_Warm | None, tuple[str, str]]:
        """The session's live process, marked busy, started if need be; or None and why not."""
        entry = self._claim(session_id)
        if entry is not None:
            if entry.agent.alive and entry.identity == warm.identity:
                if entry.unrecorded_start is not None:
                    events.append(entry.unrecorded_start)
                    entry.unrecorded_start = None
                return entry, ("", "")
            reason = "mode_switch" if entry.agent.alive else "crashed"
            code = entry.agent.close()
            self._forget(session_id, entry)
            if entry.unrecorded_start is not None:
                events.append(entry.unrecorded_start)
            events.append(self._stopped(entry, reason, code))
        if not self._make_room(session_id):
            return None, ("pool_full", f"all {self.config.max_warm_agents} warm agent "
                          "processes are busy")
        agent = self._new_agent(warm)
        try:
            agent.start()
        except LiveStartError as error:
            return None, ("initialize_failed", str(error))
        finally:
            with self._lock:
                self._starting -= 1
        entry = _Warm(agent=agent, identity=warm.identity, busy=True,
                      resume_id=_resume_id(warm.live_argv))
        entry.ready.set()
        with self._lock:
            self._agents[session_id] = entry
        events.append(AgentProcessStarted(pid=agent.pid or 0, argv=warm.live_argv,
                                          turn=turn, reason="turn", host=HOST))
        return entry, ("", "")

    def _new_agent(self, warm: WarmTurn) -> LiveAgent:
        return LiveAgent(warm.live_argv, self.dialect, env_extras=self.config.agent_env,
                         cwd=self.config.agent_cwd, kill_grace=self.config.kill_grace,
                         timeout=self.config.timeout)

    def _make_room(self, session_id: str) -> bool:
        """Reserve a slot for a new process, evicting the least recently used idle one;
        False if every slot is busy."""
        victim: tuple[str, _Warm] | None = None
        with self._lock:
            if len(self._agents) + self._starting >= self.config.max_warm_agents:
                for other, entry in self._agents.items():
                    if not entry.busy and not entry.starting and other != session_id:
                        victim = (other, entry)
                        break
                if victim is None:
                    return False
                del self._agents[victim[0]]
            self._starting += 1
        if victim is not None:
            self._close(victim[0], victim[1], "evicted")
        return True

    # -- ahead of need ----------------------------------------------------------------------

    def spawn_ahead(self, session_id: str, warm: WarmTurn, *, turn: int, reason: str) -> bool:
        """Start the session's process for its next turn (`turn`) on a thread of its own,
        unless it has one or no slot is free (nothing is evicted for it); whether one is
        being started. Never blocks. Its start is recorded with the turn that uses it."""
        with self._lock:
            if self._closed.is_set() or session_id in self._agents \
                    or len(self._agents) + self._starting >= self.config.max_warm_agents:
                return False
            entry = _Warm(agent=self._new_agent(warm), identity=warm.identity, busy=True,
                          starting=True, resume_id=_resume_id(warm.live_argv))
            self._agents[session_id] = entry
            spawner = threading.Thread(target=self._start_ahead,
                                       args=(session_id, entry, warm, turn, reason),
                                       name=f"chatledger-warm-spawn-{session_id}", daemon=True)
            self._spawners.add(spawner)
        spawner.start()
        return True

    def _start_ahead(self, session_id: str, entry: _Warm, warm: WarmTurn, turn: int,
                     reason: str) -> None:
        """Start a process spawned ahead and make it available. Runs on its own thread."""
        started = False
        try:
            entry.agent.start()
            started = True
        except LiveStartError as error:  # the turn will try again, and run cold if it must
            logger.warning("could not start %s's agent process ahead of need: %s",
                           session_id, error)
        except Exception:
            logger.exception("starting %s's agent process ahead of need failed", session_id)
        with self._lock:
            if started:
                entry.unrecorded_start = AgentProcessStarted(
                    pid=entry.agent.pid or 0, argv=warm.live_argv, turn=turn, reason=reason,
                    host=HOST)
            elif self._agents.get(session_id) is entry:
                del self._agents[session_id]
            entry.starting = entry.busy = False
            removed_as = entry.removed_as
            self._spawners.discard(threading.current_thread())
        entry.ready.set()
        if started and removed_as is not None:
            self._close(session_id, entry, removed_as)

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
        """Close a process taken out of the pool and record it on its session (with its
        start, if it was spawned ahead and no turn recorded that)."""
        with self._lock:
            if entry.starting:  # its spawner closes it once it has started
                entry.removed_as = reason
                return
            started, entry.unrecorded_start = entry.unrecorded_start, None
        code = entry.agent.close()
        stopped = self._stopped(entry, reason, code)
        try:
            self.record(session_id, [started, stopped] if started is not None else [stopped])
        except Exception:
            logger.exception("could not record the stop of %s's agent process", session_id)

    def release(self, session_id: str, reason: str) -> bool:
        """Close the session's live process if it is idle (passivation); whether one was."""
        with self._lock:
            entry = self._agents.get(session_id)
            if entry is None or (entry.busy and not entry.starting):
                return False
            del self._agents[session_id]
        self._close(session_id, entry, reason)
        return True

    def has_process(self, session_id: str) -> bool:
        """Whether the session has a live process (or one starting) in the pool."""
        return session_id in self._agents

    def warm_sessions(self) -> list[str]:
        """The sessions with a live process (or one starting), least recently used first."""
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
        """Close every process (the runtime is closing: no turn runs any more), after the
        ones still starting ahead of need have started (bounded)."""
        self._closed.set()
        self.permissions.close()
        with self._lock:
            entries = list(self._agents.items())
            self._agents.clear()
            spawners = list(self._spawners)
        for sid, entry in entries:
            self._close(sid, entry, reason)
        deadline = time.monotonic() + START_WAIT
        for spawner in spawners:
            spawner.join(max(0.0, deadline - time.monotonic()))
