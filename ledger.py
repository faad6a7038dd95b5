"""Ledger: the synchronous API, for scripts, tests and the admin CLI.

`send` blocks the calling thread until the turn ends (it must not be called from inside an
actor); its updates are the typed structs of `actors/updates.py` (`msgspec.to_builtins(update)`
gives the old manager's dict). Everything else is a short call into the runtime or a read of
the log.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import msgspec

from .actors.annotations import retag, retitle, set_archived, set_budget
from .actors.runtime import Runtime
from .actors.updates import (
    AnyTurnUpdate,
    CanvasModificationUpdate,
    ErrorUpdate,
    PermissionRequestUpdate,
    TextUpdate,
    TurnDone,
    TurnWaiting,
)
from .audit.checkpointer import start_checkpoints
from .catalog import SessionPage, list_sessions
from .catalog.listing import DEFAULT_PAGE_SIZE
from .catalog.search import DEFAULT_HIT_LIMIT, SearchHit
from .config import Config, load_config
from .errors import ChatledgerError
from .events import HistoryMessage, Recorded, SessionInfo
from .spend import OwnerBudget, SpendReport, owner_budget, set_owner_budget, spend_report
from .storage import AuditStore, Head, VerifyReport

TURN_WAIT_MARGIN = 60.0
"""Seconds a blocking send waits beyond the run timeout (queueing, recording)."""


class TurnOutcome(msgspec.Struct, kw_only=True):
    """How a turn ended: its answer or error, tool calls (as dicts), canvas changes, cost,
    and every update it streamed."""

    turn: int | None
    ok: bool
    text: str = ""
    error: str | None = None
    reason: str | None = None
    tool_calls: list[dict[str, Any]] = msgspec.field(default_factory=list)
    canvas_modifications: list[Any] = msgspec.field(default_factory=list)
    cost_usd: float | None = None
    duration: float | None = None
    updates: list[AnyTurnUpdate] = msgspec.field(default_factory=list)


class TurnTimeoutError(ChatledgerError):
    """A blocking send did not hear back in time (the turn may still end and be recorded)."""


class Ledger:
    """A conversation ledger opened in this process, used synchronously."""

    def __init__(
        self,
        path: str | None = None,
        *,
        config: Config | None = None,
        log: AuditStore | None = None,
        **settings: Any,
    ) -> None:
        if config is None:
            config = load_config(path=path, **settings)
        self.config = config
        self.runtime = Runtime(config, log)
        self._checkpoints = start_checkpoints(config, self.runtime.log)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def log(self) -> AuditStore:
        """The event log underneath."""
        return self.runtime.log

    def create_session(
        self,
        session_id: str | None = None,
        *,
        mode: str = "user",
        study_id: str | None = None,
        owner: str | None = None,
        title: str | None = None,
    ) -> SessionInfo:
        """Create a session; returns its info (a new uuid4 id unless one is given), for an
        `owner` (an opaque user id) and with a `title`, if given."""
        return self.runtime.create_session(
            session_id, mode=mode, study_id=study_id, owner=owner, title=title
        )

    def fork(
        self, session_id: str, at_version: int, *, new_session_id: str | None = None
    ) -> SessionInfo:
        """Fork a session at `at_version` into a new session (a uuid4 id unless one is
        given) that starts with ForkedFrom and the parent's history up to that version;
        returns the fork's info. Refused for a version out of range or inside a turn."""
        return self.runtime.fork(session_id, at_version, new_session_id=new_session_id)

    def set_title(self, session_id: str, title: str) -> SessionInfo:
        """Set a session's title ("" clears it)."""
        return self.runtime.annotate(session_id, retitle(title))

    def tag(
        self, session_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> SessionInfo:
        """Add tags to and remove tags from a session."""
        return self.runtime.annotate(session_id, retag(add, remove))

    def archive(self, session_id: str) -> SessionInfo:
        """Archive a session (listings leave it out unless asked for archived ones)."""
        return self.runtime.annotate(session_id, set_archived(True))

    def unarchive(self, session_id: str) -> SessionInfo:
        """Take a session out of the archive."""
        return self.runtime.annotate(session_id, set_archived(False))

    def list_sessions(
        self,
        *,
        owner: str | None = None,
        tags: Iterable[str] = (),
        archived: bool | None = False,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> SessionPage:
        """A page of sessions, newest activity first, and the cursor of the next page."""
        return list_sessions(self.runtime.sessions(), owner=owner, tags=tags,
                             archived=archived, limit=limit, cursor=cursor)

    def resume_session(
        self, session_id: str, *, mode: str | None = None, study_id: str | None = None
    ) -> SessionInfo:
        """Resume a session (created with this id if never seen), keeping mode and study
        unless new ones are given."""
        return self.runtime.resume_session(
            session_id, mode=mode, study_id=study_id, change_study=study_id is not None
        )

    def send(
        self,
        session_id: str,
        message: str,
        *,
        canvas_state: Any = None,
        on_update: Callable[[AnyTurnUpdate], None] | None = None,
        stream_deltas: bool = False,
        timeout: float | None = None,
    ) -> TurnOutcome:
        """Run one turn and block until it ends; `on_update` sees each update as it comes
        (on another thread). Waits at most `timeout` (default: run timeout + a margin) for
        each update; while another process runs a turn of the session (`TurnWaiting`), it
        waits for that too, at most `turn_wait_timeout` more (0: as long as it takes).
        Without `on_update` nobody can answer a tool request: it is denied at once."""
        updates: queue.SimpleQueue[AnyTurnUpdate] = queue.SimpleQueue()

        def sink(item: AnyTurnUpdate) -> None:
            if on_update is not None:
                on_update(item)
            elif isinstance(item, PermissionRequestUpdate):  # nobody can answer: deny
                self.runtime.decide_permission(
                    session_id, item.request_id, False, decided_by="chatledger",
                    message="nobody could decide (the turn was sent without on_update)")
            updates.put(item)

        self.runtime.send(
            session_id, message, sink, canvas_state=canvas_state, stream_deltas=stream_deltas
        )
        wait: float | None = self.config.timeout + TURN_WAIT_MARGIN if timeout is None else timeout
        outcome = TurnOutcome(turn=None, ok=False)
        while True:
            try:
                item = updates.get(timeout=wait)
            except queue.Empty:
                raise TurnTimeoutError(
                    f"no answer from session {session_id} within {wait or 0:.0f} s"
                ) from None
            outcome.updates.append(item)
            if isinstance(item, TurnWaiting):
                limit = self.config.turn_wait_timeout
                wait = (wait + limit) if limit and wait is not None else None
            if isinstance(item, CanvasModificationUpdate):
                outcome.canvas_modifications.append(item.modification)
            elif isinstance(item, TextUpdate):
                outcome.text = item.content
            elif isinstance(item, ErrorUpdate):
                outcome.error = item.message
            elif isinstance(item, TurnDone):
                outcome.turn = item.turn
                outcome.ok = item.ok
                outcome.reason = item.reason
                outcome.tool_calls = [msgspec.to_builtins(call) for call in item.tool_calls]
                cost, duration = item.cost_usd, item.duration
                outcome.cost_usd = None if isinstance(cost, msgspec.UnsetType) else cost
                outcome.duration = None if isinstance(duration, msgspec.UnsetType) else duration
                return outcome

    def interrupt(self, session_id: str) -> bool:
        """Interrupt the session's running turn (a warm agent lives on); whether one ran.
        The turn ends as cancelled, with the text it had streamed; queued turns stay."""
        return self.runtime.interrupt(session_id)

    def decide_permission(self, session_id: str, request_id: str, allow: bool,
                          message: str | None = None, decided_by: str | None = None) -> bool:
        """Answer a `permission_request` update of the session's running turn (recorded as
        PermissionDecided); False if that request is not open."""
        return self.runtime.decide_permission(session_id, request_id, allow, message=message,
                                              decided_by=decided_by)

    def switch_mode(self, session_id: str, mode: str) -> SessionInfo:
        """Change a session's permission mode."""
        return self.runtime.switch_mode(session_id, mode)

    def set_study(self, session_id: str, study_id: str | None) -> SessionInfo:
        """Set or clear a session's study."""
        return self.runtime.set_study(session_id, study_id)

    def redact(self, session_id: str, version: int | None, *, reason: str = "",
               redacted_by: str | None = None) -> list[Recorded]:
        """Remove the content of one version of a session (None: erase all its content),
        keeping every hash chain verifiable; returns the Redacted records appended."""
        return self.runtime.redact(session_id, version, reason=reason, redacted_by=redacted_by)

    def info(self, session_id: str) -> SessionInfo | None:
        """A session's info, or None if unknown."""
        return self.runtime.info(session_id)

    def history(self, session_id: str) -> list[HistoryMessage]:
        """A session's conversation as messages."""
        return self.runtime.history(session_id)

    def events(self, session_id: str) -> list[Recorded]:
        """A session's recorded events."""
        return self.runtime.events(session_id)

    def sessions(self) -> list[SessionInfo]:
        """Every session's info, from the index."""
        return self.runtime.sessions()

    def set_budget(
        self, session_id: str, *, usd: float | None = None, tokens: int | None = None
    ) -> SessionInfo:
        """Cap a session's spend in USD and tokens (None: no cap of that kind); a turn that
        would start with the cap reached is refused (TurnRefused, a `budget_exceeded` error)."""
        return self.runtime.annotate(session_id, set_budget(usd, tokens))

    def set_owner_budget(
        self, owner: str, *, usd: float | None = None, tokens: int | None = None
    ) -> OwnerBudget:
        """Cap the spend of all an owner's sessions together (None: no cap of that kind)."""
        return set_owner_budget(self.runtime.log, owner, usd=usd, tokens=tokens)

    def owner_budget(self, owner: str) -> OwnerBudget:
        """An owner's caps and what the owner's sessions have spent."""
        return owner_budget(self.runtime.log, owner)

    def spend(self) -> SpendReport:
        """What was spent per owner and per day (one pass over the log)."""
        return spend_report(self.runtime.log.read_all())

    def search(
        self,
        text: str,
        *,
        owner: str | None = None,
        since: datetime | None = None,
        limit: int = DEFAULT_HIT_LIMIT,
    ) -> list[SearchHit]:
        """Messages and answers holding every word of `text`, newest first (of `owner`'s
        sessions, since a time, if given); the index catches up with the log first."""
        return self.runtime.search_index().search(text, owner=owner, since=since, limit=limit)

    def verify(self, saved_head: Head | None = None) -> VerifyReport:
        """Check the hash chains and indexes (and a saved head, if given)."""
        return self.runtime.log.verify(saved_head)

    def passivate(self, session_id: str) -> bool:
        """Stop a session's actor now if idle (it is reactivated from the log on next use)."""
        return self.runtime.passivate(session_id)

    def sweep(self, now: float | None = None) -> dict[str, int]:
        """Passivate idle sessions and expire old ones now."""
        return self.runtime.sweep(now)

    def close(self) -> None:
        """Anchor the head, cancel running turns (recorded), stop chatledger's actors, close."""
        checkpoints, self._checkpoints = self._checkpoints, None
        if checkpoints is not None:
            checkpoints.close()
        self.runtime.close()
