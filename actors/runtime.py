"""Runtime: wires one ledger's event log, run pool, supervisor and sweeper together.

The sync `Ledger` and the async `SessionManager` are thin faces over it. It runs in the
caller's threads: every call into an actor is an `ask()` with a timeout, made from a thread
that is not an actor (never from inside one). `close()` stops only what it started, in
reverse order: sweeper, runs (recorded as cancelled), session actors, supervisor, log.

Every thread chatledger starts is a daemon, and an exit hook closes the runtimes still open
when the interpreter ends (normally, on an uncaught exception, after Ctrl-C), so a program
that never calls `close()` exits, and its turns in flight are recorded as cancelled.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import os
import tempfile
import threading
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pykka

from ..agent import McpConfigFiles, select_dialect
from ..catalog.search import SearchIndex
from ..config import Config
from ..errors import (
    ChatledgerError,
    ConcurrencyError,
    ConfigError,
    InvalidSessionIdError,
    LedgerClosedError,
    LedgerError,
)
from ..events import Event, HistoryMessage, Recorded, SessionInfo, history
from ..events.system import is_reserved
from ..sdk_store import LedgerSessionStore
from ..storage import AuditStore, Lease, local_directory, open_store, validate_session_id
from ..telemetry import instrument_store, watch_runtime
from .annotations import Decider
from .fork import fork_session
from .interrupts import InterruptWatcher
from .messages import (
    Activate,
    Annotate,
    Answer,
    Ask,
    CancelTurn,
    CreateSession,
    GetInfo,
    LeaseLost,
    LiveSessions,
    Passivate,
    ResumeSession,
    RouteCompletion,
    RunCompleted,
    SendMessage,
    SetStudy,
    Sweep,
    SwitchMode,
    ask,
)
from .ownership import LeaseKeeper
from .permissions import PermissionDesk
from .preflight import check_turn_size
from .runs import RunPool
from .session import SessionActor, SessionServices
from .supervisor import SessionRegistry, Supervisor
from .transcripts import Transcripts
from .updates import TurnSink
from .warm import WarmPool

logger = logging.getLogger(__name__)

ASK_TIMEOUT = 60.0
"""Seconds to wait for an actor to answer a command (appends are milliseconds)."""
EXIT_CLOSE_TIMEOUT = 10.0
"""Seconds the exit hook gives each open runtime to record its turns and close."""

_open_runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()


@atexit.register
def _close_open_runtimes() -> None:
    """Close every runtime the program left open. Runs once, at interpreter exit."""
    for runtime in list(_open_runtimes):
        try:
            runtime.close(timeout=EXIT_CLOSE_TIMEOUT)
        except Exception:  # exiting anyway: say why this one did not close cleanly
            logger.exception("closing chatledger at exit failed")


def load_mcp_servers(path: str | None) -> dict[str, Any] | None:
    """Read the configured MCP servers file (claude's `{"mcpServers": {...}}` form)."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"CHATLEDGER_MCP_CONFIG: cannot read {path}: {error}") from None
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise ConfigError(f"CHATLEDGER_MCP_CONFIG: {path} has no \"mcpServers\" object")
    return servers


def _mcp_directory(location: str) -> Path:
    """Where MCP config files go: beside a ledger directory, else a private temporary one."""
    directory = local_directory(location)
    if directory is not None:
        return directory / "mcp"
    return Path(tempfile.gettempdir()) / f"chatledger-mcp-{os.getpid()}-{uuid.uuid4().hex[:12]}"


class Runtime:
    """One ledger's live machinery: log, pool, supervisor, session actors and sweeper."""

    def __init__(self, config: Config, log: AuditStore | None = None) -> None:
        self.config = config
        self._owns_log = log is None
        self.log: AuditStore = log if log is not None else open_store(config.path)
        try:
            self._servers = load_mcp_servers(config.mcp_config)
        except BaseException:
            if self._owns_log:
                self.log.close()
            raise
        self.dialect = select_dialect(config.agent_dialect, config.agent_command)
        self.mcp_files = McpConfigFiles(_mcp_directory(config.path),
                                        self.dialect.mcp_config_document)
        with contextlib.suppress(OSError):  # a read-only ledger keeps what it has
            self.mcp_files.remove_all()  # what a process that died (SIGKILL) left behind
        self.pool = RunPool(config.max_runs)
        self.interrupts = InterruptWatcher(
            self.log, lambda: [(t.session_id, t.turn, t.since_version)
                               for t in self.pool.all_in_flight()],
            self._interrupt_turn)
        self.pool.on_submit = self.interrupts.run_started
        self.warm = (WarmPool(config, self.dialect, self._record_outside_a_turn)
                     if config.warm_agents else None)
        self.permissions: PermissionDesk | None = (
            self.warm.permissions if self.warm is not None
            else PermissionDesk(self._record_outside_a_turn, config.permission_timeout)
            if config.tool_approvals else None)
        """Open tool requests of this runtime's turns, warm and cold (None: approvals off)."""
        self.registry = SessionRegistry()
        self.closing = threading.Event()
        self._tickets = itertools.count(1)
        self._closed = False
        self._search: SearchIndex | None = None
        self._search_lock = threading.Lock()
        self.leases = LeaseKeeper(self.log, config.lease_ttl, self._lease_lost)
        services = SessionServices(
            config=config,
            dialect=self.dialect,
            log=instrument_store(self.log),
            pool=self.pool,
            route_completion=self._route_completion,
            mcp_config_path=self._mcp_config_path,
            touch=self.registry.touch,
            forget=self.registry.forget,
            remove_session_files=self.mcp_files.remove_session,
            closing=self.closing,
            leases=self.leases,
            transcripts=Transcripts(LedgerSessionStore(self.log)),
            warm=self.warm,
            permissions=self.permissions,
        )
        self.supervisor: pykka.ActorRef[Supervisor] = Supervisor.start(services, self.registry)
        self._sweeper_stop = threading.Event()
        self._sweeper = threading.Thread(
            target=self._sweep_periodically, name="chatledger-sweeper", daemon=True
        )
        self._sweeper.start()
        watch_runtime(self)
        _open_runtimes.add(self)

    # -- plumbing ---------------------------------------------------------------------------

    def _mcp_config_path(self, session_id: str, mode: str) -> str | None:
        if not self._servers:
            return None
        return self.mcp_files.path_for(session_id, mode, self._servers)

    def _route_completion(self, completion: RunCompleted) -> None:
        """Hand a run's outcome to its session's actor. Runs on a pool thread."""
        ref = self.registry.get(completion.session_id)
        if ref is not None:
            try:
                ref.tell(completion)
                return
            except pykka.ActorDeadError:
                pass
        self.supervisor.tell(RouteCompletion(completion))

    def _lease_lost(self, session_id: str, lease: Lease) -> None:
        """Tell a session's actor its lease was taken over. Runs on the keeper's thread."""
        ref = self.registry.get(session_id)
        if ref is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(LeaseLost(lease.epoch))

    def _record_outside_a_turn(self, session_id: str, events: Sequence[Event]) -> None:
        """Append events at the session's current version (a warm agent process stopped
        outside a turn); its actor, if live, reloads at its next append."""
        for _ in range(8):
            info = self.log.info(session_id)
            try:
                self.log.append(session_id, list(events), info.version if info else 0)
                return
            except ConcurrencyError:
                continue
        logger.warning("could not record %d events on %s: the session kept changing",
                       len(events), session_id)

    def _sweep_periodically(self) -> None:
        """Tell the supervisor to sweep every `sweep_interval` seconds. Sweeper thread."""
        while not self._sweeper_stop.wait(self.config.sweep_interval):
            try:
                self.supervisor.tell(Sweep())
            except pykka.ActorDeadError:
                return

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerClosedError("this chatledger runtime is closed")

    def actor(self, session_id: str, *, must_exist: bool = True) -> pykka.ActorRef[SessionActor]:
        """The live actor of a session (activated from the log if need be). Blocks briefly."""
        return self._activate(session_id, must_exist=must_exist, pin=False)

    def _activate(
        self, session_id: str, *, must_exist: bool, pin: bool
    ) -> pykka.ActorRef[SessionActor]:
        self._check_open()
        validate_session_id(session_id)
        if is_reserved(session_id):
            raise InvalidSessionIdError(
                f"session id {session_id[:40]!r} is reserved: ids starting with '~' are "
                "chatledger's own streams, not sessions"
            )
        if pin:  # a live actor is found without a round trip through the supervisor
            ref = self.registry.pin(session_id)
            if ref is not None:
                return ref
        return ask(self.supervisor, Activate(session_id, must_exist, pin), ASK_TIMEOUT)

    def ask(self, session_id: str, message: Ask[Answer], *, must_exist: bool = True) -> Answer:
        """Ask a session's actor, pinned meanwhile so that it is not passivated between its
        activation and the answer; if it died in between (a crash), activate it again once."""
        for attempt in range(2):
            ref = self._activate(session_id, must_exist=must_exist, pin=True)
            try:
                return ask(ref, message, ASK_TIMEOUT)
            except pykka.ActorDeadError:
                if attempt:
                    raise self._why_it_died(session_id) from None
            finally:
                self.registry.unpin(session_id, ref)
        raise AssertionError("unreachable")

    def _why_it_died(self, session_id: str) -> ChatledgerError:
        """The error behind a session actor that died twice in a row: reading the session
        again raises what stopped it (a damaged ledger, usually), or a plain ledger error."""
        try:
            self.log.read_session(session_id)
        except ChatledgerError as error:
            return error
        return LedgerError(
            f"session {session_id} could not be started twice in a row: run "
            f"`chatledger verify {session_id}`, and see the log for the actor's error"
        )

    # -- commands ---------------------------------------------------------------------------

    def create_session(
        self,
        session_id: str | None = None,
        *,
        mode: str = "user",
        study_id: str | None = None,
        owner: str | None = None,
        title: str | None = None,
    ) -> SessionInfo:
        """Create a session (a new uuid4 id unless one is given), for an owner, with a title."""
        session_id = session_id or str(uuid.uuid4())
        return self.ask(
            session_id,
            CreateSession(mode=mode, study_id=study_id, owner=owner, title=title),
            must_exist=False,
        )

    def fork(
        self, session_id: str, at_version: int, *, new_session_id: str | None = None
    ) -> SessionInfo:
        """Fork a session at a version into a new one (a uuid4 id unless one is given):
        ForkedFrom, then the parent's history up to that version, in one atomic append."""
        self._check_open()
        return fork_session(self.log, session_id, at_version, new_session_id)

    def annotate(self, session_id: str, decide: Decider) -> SessionInfo:
        """Record a label change (title, tags, archive, caps) decided by `decide`."""
        return self.ask(session_id, Annotate(decide))

    def resume_session(
        self,
        session_id: str,
        *,
        mode: str | None = None,
        study_id: str | None = None,
        change_study: bool = False,
    ) -> SessionInfo:
        """Resume a session, or create it with this id if it was never seen."""
        return self.ask(
            session_id,
            ResumeSession(mode=mode, study_id=study_id, change_study=change_study),
            must_exist=False,
        )

    def switch_mode(self, session_id: str, mode: str) -> SessionInfo:
        """Change a session's permission mode."""
        return self.ask(session_id, SwitchMode(mode))

    def set_study(self, session_id: str, study_id: str | None) -> SessionInfo:
        """Set or clear a session's study."""
        return self.ask(session_id, SetStudy(study_id))

    def send(
        self,
        session_id: str,
        text: str,
        sink: TurnSink,
        *,
        canvas_state: Any = None,
        stream_deltas: bool = False,
    ) -> int:
        """Queue a turn; updates go to `sink` (on other threads). Returns the turn's ticket."""
        check_turn_size(self.config, text, canvas_state)
        ticket = next(self._tickets)
        self.ask(
            session_id,
            SendMessage(text=text, canvas_state=canvas_state, sink=sink, ticket=ticket,
                        stream_deltas=stream_deltas),
        )
        return ticket

    def interrupt(self, session_id: str) -> bool:
        """Interrupt the session's running turn, if this process runs one: a warm agent gets
        the control `interrupt` (it lives on), a cold one is stopped as a cancel stops it.
        The turn is recorded as cancelled, with what it had streamed. Queued turns stay."""
        self._check_open()
        validate_session_id(session_id)
        return self._interrupt_turn(session_id, None)

    def _interrupt_turn(self, session_id: str, turn: int | None) -> bool:
        """Stop the session's runs in flight here (only `turn`'s, when given); whether any
        was. Any thread (the interrupt watcher's, for a request from another process)."""
        if self.permissions is not None:
            self.permissions.abandon(session_id, "the turn was interrupted")
        running = [ticket for ticket in self.pool.in_flight(session_id)
                   if not ticket.cancel.is_set() and turn in (None, ticket.turn)]
        for ticket in running:
            ticket.cancel.set()
        return bool(running)

    def decide_permission(self, session_id: str, request_id: str, allow: bool, *,
                          message: str | None = None, decided_by: str | None = None) -> bool:
        """Answer a tool request of the session's running turn (recorded, then told to the
        agent); False if no such request is open."""
        self._check_open()
        if self.permissions is None:
            return False
        return self.permissions.decide(session_id, request_id, allow, message=message,
                                       decided_by=decided_by)

    def cancel(self, session_id: str, ticket: int) -> bool:
        """Cancel a queued or running turn (a running agent is stopped, and it is recorded);
        its open tool requests are denied first."""
        if self.permissions is not None:
            self.permissions.abandon(session_id)
        ref = self.registry.get(session_id)
        if ref is None:
            return False
        try:
            return ask(ref, CancelTurn(ticket), ASK_TIMEOUT)
        except pykka.ActorDeadError:
            return False

    def redact(self, session_id: str, version: int | None, *, reason: str = "",
               redacted_by: str | None = None) -> list[Recorded]:
        """Remove the content of one version of a session (None: of all of it), recording a
        Redacted event each (see `AuditStore.redact`); an idle actor is passivated, so it
        comes back from the redacted log (a busy one reloads at its next append)."""
        self._check_open()
        validate_session_id(session_id)
        written = self.log.redact(session_id, version, reason=reason, redacted_by=redacted_by)
        with contextlib.suppress(pykka.ActorDeadError):
            self.passivate(session_id)
        return written

    # -- queries (from the index and the log: no activation needed) -------------------------

    def info(self, session_id: str) -> SessionInfo | None:
        """A session's info, or None if unknown."""
        self._check_open()
        return self.log.info(session_id)

    def live_info(self, session_id: str) -> SessionInfo:
        """A session's info from its live actor (activating it)."""
        return self.ask(session_id, GetInfo())

    def history(self, session_id: str) -> list[HistoryMessage]:
        """A session's conversation as messages."""
        self._check_open()
        return history(self.log.read_session(session_id))

    def events(self, session_id: str) -> list[Recorded]:
        """A session's recorded events."""
        self._check_open()
        return self.log.read_session(session_id)

    def sessions(self) -> list[SessionInfo]:
        """Every session's info."""
        self._check_open()
        return self.log.sessions()

    def search_index(self) -> SearchIndex:
        """The ledger's full-text search index (opened on first use; caught up per query)."""
        self._check_open()
        with self._search_lock:
            if self._search is None:
                self._search = SearchIndex(self.log, self.config.search_path)
            return self._search

    def live_sessions(self) -> list[str]:
        """Ids of the sessions with a live actor."""
        return ask(self.supervisor, LiveSessions(), ASK_TIMEOUT)

    def passivate(self, session_id: str) -> bool:
        """Stop a session's actor now if it is idle (it comes back on next use)."""
        return ask(self.supervisor, Passivate(session_id), ASK_TIMEOUT)

    def sweep(self, now: float | None = None) -> dict[str, int]:
        """Passivate idle sessions and expire old ones now (as the sweeper does); returns
        once every expiry is recorded, so reads after it see them."""
        expiries: list[Any] = []
        result = ask(self.supervisor, Sweep(now, expiries), ASK_TIMEOUT)
        for expiry in expiries:
            with contextlib.suppress(pykka.ActorDeadError):
                expiry.get(timeout=ASK_TIMEOUT)
        return result

    # -- shutdown ---------------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Cancel runs (recorded as cancelled), stop our actors in reverse order, close."""
        if self._closed:
            return
        self._closed = True
        _open_runtimes.discard(self)
        self.closing.set()
        self._sweeper_stop.set()
        self._sweeper.join(timeout)
        self.interrupts.close()
        if self.permissions is not None:
            self.permissions.abandon_all("chatledger is shutting down")
        self.pool.cancel_all()
        if not self.pool.shutdown(wait=True, timeout=timeout):
            logger.warning("an agent run did not end within %s s of its cancel", timeout)
        if self.warm is not None:
            self.warm.close_all("shutdown")
        elif self.permissions is not None:
            self.permissions.close()
        # Actors process what is in their mailboxes (run outcomes) before they stop.
        for ref in self.registry.take_all():
            try:
                ref.stop(block=True, timeout=timeout)
            except pykka.Timeout:
                logger.warning("a session actor did not stop within %s s", timeout)
        try:
            self.supervisor.stop(block=True, timeout=timeout)
        except pykka.Timeout:
            logger.warning("the supervisor did not stop within %s s", timeout)
        # Completions routed through the supervisor may have started actors late.
        for ref in self.registry.take_all():
            ref.stop(block=True, timeout=timeout)
        self.leases.close()
        self.mcp_files.remove_all()
        if self._search is not None:
            self._search.close()
        if self._owns_log:
            self.log.close()
