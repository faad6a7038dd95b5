"""The async SessionManager: a drop-in for the old in-memory manager, backed by the ledger.

Same method names, arguments, defaults, return types and yielded dict shapes as the manager
it replaces (`start`/`stop`, `create_session`, `send_message`, `switch_mode`,
`set_study_context`, `get_session`, `get_session_info`, `get_session_manager`; the shapes are
pinned by `tests/test_manager.py`), plus persistence, ordering, audit and crash safety. This is
the one place a turn's typed updates become the old manager's dicts (`update_to_dict`). The
event loop is never blocked: calls into the runtime run on worker threads, and turn updates
come back from pykka threads through `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec

from .actors.annotations import Decider, retag, retitle, set_archived, set_budget
from .actors.runtime import Runtime
from .actors.updates import AnyTurnUpdate, TextDeltaUpdate, TurnDone, TurnWaiting
from .audit.checkpointer import Checkpointer, start_checkpoints
from .catalog import SessionPage, list_sessions
from .catalog.listing import DEFAULT_PAGE_SIZE
from .catalog.search import DEFAULT_HIT_LIMIT, SearchHit
from .config import Config, load_config
from .errors import (
    SESSION_NOT_FOUND,
    ChatledgerError,
    InvalidSessionIdError,
    UnknownSessionError,
)
from .events import STATUS_EXPIRED, STATUS_IDLE, Recorded, SessionInfo
from .spend import OwnerBudget, owner_budget, set_owner_budget


def update_to_dict(update: AnyTurnUpdate) -> dict[str, Any]:
    """A turn's update as the old manager yielded it (`done` carries only the tool calls)."""
    if isinstance(update, TurnDone):
        return {"type": "done", "tool_calls": msgspec.to_builtins(list(update.tool_calls))}
    data: dict[str, Any] = msgspec.to_builtins(update)
    return data


def _not_found(session_id: str) -> ValueError:
    """The old manager's error for an unknown session in `switch_mode`/`set_study_context`."""
    return ValueError(f"Session {session_id} not found")


class _DefaultMode(str):
    """The default `mode` of create_session: equal to "user", but recognisably not given,
    so resuming keeps the session's own mode unless the caller names one."""


DEFAULT_MODE = _DefaultMode("user")


@dataclass
class ClaudeSession:
    """A session as the old manager exposed it (a snapshot taken from the ledger)."""

    session_id: str
    mode: str
    study_id: str | None
    created_at: datetime
    last_active: datetime
    status: str = STATUS_IDLE

    def is_alive(self) -> bool:
        """Whether the session can still take messages (not expired)."""
        return self.status != STATUS_EXPIRED

    @classmethod
    def from_info(cls, info: SessionInfo) -> ClaudeSession:
        """Build the snapshot from the ledger's session info."""
        now = datetime.now(timezone.utc)
        return cls(
            session_id=info.session_id,
            mode=info.mode,
            study_id=info.study_id,
            created_at=info.created_at or now,
            last_active=info.last_active or now,
            status=info.status,
        )


class SessionManager:
    """Manages agent sessions for a backend; every call is recorded in the ledger.

    `SessionManager()` reads its configuration (CHATLEDGER_* variables, chatledger.toml) at
    construction; keyword arguments override it. `start()` is optional: the first call
    starts it.
    """

    def __init__(self, config: Config | None = None, **settings: Any) -> None:
        self.config = config if config is not None else load_config(**settings)
        self._runtime: Runtime | None = None
        self._checkpoints: Checkpointer | None = None
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------

    def _ensure_runtime(self) -> Runtime:
        """The runtime, started on first use. Blocks briefly (opens the ledger)."""
        with self._lock:
            if self._runtime is None:
                self._runtime = Runtime(self.config)
                self._checkpoints = start_checkpoints(self.config, self._runtime.log)
            return self._runtime

    async def _runtime_async(self) -> Runtime:
        if self._runtime is not None:
            return self._runtime
        return await asyncio.to_thread(self._ensure_runtime)

    async def start(self) -> None:
        """Open the ledger and start the supervisor (idle sweeps run every 5 minutes)."""
        await self._runtime_async()

    async def stop(self) -> None:
        """Anchor the head (see `anchor_interval`), cancel running turns (recorded as
        cancelled), stop chatledger's actors, close."""
        with self._lock:
            runtime, self._runtime = self._runtime, None
            checkpoints, self._checkpoints = self._checkpoints, None
        if checkpoints is not None:
            await asyncio.to_thread(checkpoints.close)
        if runtime is not None:
            await asyncio.to_thread(runtime.close)

    @property
    def runtime(self) -> Runtime:
        """The live runtime (started on first use)."""
        return self._ensure_runtime()

    # -- the old interface ------------------------------------------------------------------

    async def create_session(
        self,
        mode: str = DEFAULT_MODE,
        study_id: str | None = None,
        resume_session_id: str | None = None,
        *,
        owner: str | None = None,
        title: str | None = None,
    ) -> ClaudeSession:
        """Create a session, or resume one by id (its mode and study are kept unless new ones
        are given; an id never seen creates a session with that id). A new session belongs to
        `owner` (an opaque user id) and has `title`, if given."""
        runtime = await self._runtime_async()
        if resume_session_id is not None:
            info = await asyncio.to_thread(
                runtime.resume_session,
                resume_session_id,
                mode=None if isinstance(mode, _DefaultMode) else mode,
                study_id=study_id,
                change_study=study_id is not None,
            )
        else:
            info = await asyncio.to_thread(
                runtime.create_session, None, mode=str(mode), study_id=study_id, owner=owner,
                title=title,
            )
        return ClaudeSession.from_info(info)

    async def send_message(
        self,
        session_id: str,
        message: str,
        canvas_state: dict[str, Any] | None = None,
        *,
        stream_deltas: bool = False,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Run one turn and yield its updates as they happen: `canvas_modification`*,
        `text`, `error` (if any), then `done` with the turn's tool calls. Errors are yielded,
        never raised. With `stream_deltas`, `text_delta` items come as the agent writes, and a
        `tool_call` item (`name`, `is_error`) as each tool call completes. If the consumer
        stops early, the run is cancelled and recorded as cancelled."""
        try:
            runtime = await self._runtime_async()
        except ChatledgerError as error:
            yield {"type": "error", "message": str(error)}
            return
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[AnyTurnUpdate] = asyncio.Queue()

        def sink(item: AnyTurnUpdate) -> None:
            """Receive an update on a pykka or pool thread; hand it to the event loop."""
            # RuntimeError: the loop is closed, so nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(updates.put_nowait, item)

        try:
            ticket = await asyncio.to_thread(
                runtime.send,
                session_id,
                message,
                sink,
                canvas_state=canvas_state,
                stream_deltas=stream_deltas,
            )
        except (UnknownSessionError, InvalidSessionIdError):
            yield {"type": "error", "message": SESSION_NOT_FOUND}
            return
        except ChatledgerError as error:
            yield {"type": "error", "message": str(error)}
            return
        finished = False
        try:
            while True:
                item = await updates.get()
                if isinstance(item, TurnDone):
                    finished = True
                    yield update_to_dict(item)
                    return
                if isinstance(item, TextDeltaUpdate) and not stream_deltas:
                    continue
                if isinstance(item, TurnWaiting):  # not one of the old manager's dicts
                    continue
                yield update_to_dict(item)
        finally:
            if not finished:
                # The consumer went away (websocket closed): stop the agent; it is recorded.
                await asyncio.shield(asyncio.to_thread(runtime.cancel, session_id, ticket))

    async def interrupt(self, session_id: str) -> bool:
        """Interrupt the session's running turn: a warm agent gets the control `interrupt`
        and lives on, a cold one is stopped. Its `send_message` ends with an error and
        `done`; the RunFailed keeps what it had streamed. Messages sent meanwhile stay
        queued. Returns whether a turn was running."""
        runtime = await self._runtime_async()
        return await asyncio.to_thread(runtime.interrupt, session_id)

    async def decide_permission(self, session_id: str, request_id: str, allow: bool,
                                message: str | None = None,
                                decided_by: str | None = None) -> bool:
        """Answer a `permission_request` that `send_message` yielded (with `tool_approvals`,
        in user mode, warm or cold): recorded as PermissionDecided, then told to the agent.
        A consumer that leaves the turn denies. False if that request is not open."""
        runtime = await self._runtime_async()
        return await asyncio.to_thread(runtime.decide_permission, session_id, request_id,
                                       allow, message=message, decided_by=decided_by)

    async def switch_mode(self, session_id: str, new_mode: str) -> ClaudeSession:
        """Switch a session's permission mode; ValueError for an unknown session or mode."""
        runtime = await self._runtime_async()
        try:
            info = await asyncio.to_thread(runtime.switch_mode, session_id, new_mode)
        except (UnknownSessionError, InvalidSessionIdError):
            raise _not_found(session_id) from None
        return ClaudeSession.from_info(info)

    async def set_study_context(self, session_id: str, study_id: str | None) -> None:
        """Set the study a session works on; ValueError for an unknown session."""
        runtime = await self._runtime_async()
        try:
            await asyncio.to_thread(runtime.set_study, session_id, study_id)
        except (UnknownSessionError, InvalidSessionIdError):
            raise _not_found(session_id) from None

    # -- labels and listings (new: keyword-friendly, return the ledger's SessionInfo) -------

    async def _annotate(self, session_id: str, decide: Decider) -> SessionInfo:
        runtime = await self._runtime_async()
        try:
            return await asyncio.to_thread(runtime.annotate, session_id, decide)
        except (UnknownSessionError, InvalidSessionIdError):
            raise _not_found(session_id) from None

    async def fork(
        self, session_id: str, at_version: int, *, new_session_id: str | None = None
    ) -> SessionInfo:
        """Fork a session at `at_version` into a new session (see `Ledger.fork`); ValueError
        for an unknown parent."""
        runtime = await self._runtime_async()
        try:
            return await asyncio.to_thread(runtime.fork, session_id, at_version,
                                           new_session_id=new_session_id)
        except UnknownSessionError:
            raise _not_found(session_id) from None

    async def set_title(self, session_id: str, title: str) -> SessionInfo:
        """Set a session's title ("" clears it); ValueError for an unknown session."""
        return await self._annotate(session_id, retitle(title))

    async def tag(
        self, session_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> SessionInfo:
        """Add tags to and remove tags from a session; ValueError for an unknown session."""
        return await self._annotate(session_id, retag(add, remove))

    async def archive(self, session_id: str) -> SessionInfo:
        """Archive a session; ValueError for an unknown session."""
        return await self._annotate(session_id, set_archived(True))

    async def unarchive(self, session_id: str) -> SessionInfo:
        """Take a session out of the archive; ValueError for an unknown session."""
        return await self._annotate(session_id, set_archived(False))

    async def redact(self, session_id: str, version: int | None, *, reason: str = "",
                     redacted_by: str | None = None) -> list[Recorded]:
        """Remove the content of one version of a session (None: erase all its content),
        keeping the hash chains verifiable; returns the Redacted records. ValueError for an
        unknown session; RedactionRefusedError when the version cannot be redacted."""
        runtime = await self._runtime_async()
        try:
            return await asyncio.to_thread(runtime.redact, session_id, version, reason=reason,
                                           redacted_by=redacted_by)
        except (UnknownSessionError, InvalidSessionIdError):
            raise _not_found(session_id) from None

    async def list_sessions(
        self,
        *,
        owner: str | None = None,
        tags: Iterable[str] = (),
        archived: bool | None = False,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> SessionPage:
        """A page of sessions, newest activity first, and the cursor of the next page."""
        runtime = await self._runtime_async()
        infos = await asyncio.to_thread(runtime.sessions)
        return list_sessions(infos, owner=owner, tags=tuple(tags), archived=archived,
                             limit=limit, cursor=cursor)

    async def set_budget(
        self, session_id: str, *, usd: float | None = None, tokens: int | None = None
    ) -> SessionInfo:
        """Cap a session's spend in USD and tokens (None: no cap of that kind); a turn that
        would start with the cap reached yields a `budget exceeded` error and is recorded."""
        return await self._annotate(session_id, set_budget(usd, tokens))

    async def set_owner_budget(
        self, owner: str, *, usd: float | None = None, tokens: int | None = None
    ) -> OwnerBudget:
        """Cap the spend of all an owner's sessions together (None: no cap of that kind)."""
        runtime = await self._runtime_async()
        return await asyncio.to_thread(set_owner_budget, runtime.log, owner, usd=usd,
                                       tokens=tokens)

    async def owner_budget(self, owner: str) -> OwnerBudget:
        """An owner's caps and what the owner's sessions have spent."""
        runtime = await self._runtime_async()
        return await asyncio.to_thread(owner_budget, runtime.log, owner)

    async def search(
        self,
        text: str,
        *,
        owner: str | None = None,
        since: datetime | None = None,
        limit: int = DEFAULT_HIT_LIMIT,
    ) -> list[SearchHit]:
        """Messages and answers holding every word of `text`, newest first (of `owner`'s
        sessions, since a time, if given); the index catches up with the log first."""
        runtime = await self._runtime_async()
        index = await asyncio.to_thread(runtime.search_index)
        return await asyncio.to_thread(index.search, text, owner=owner, since=since, limit=limit)

    def get_session(self, session_id: str) -> ClaudeSession | None:
        """The session, or None if unknown (a short index read)."""
        info = self._info(session_id)
        return ClaudeSession.from_info(info) if info is not None else None

    def get_session_info(self, session_id: str) -> dict[str, Any] | None:
        """The old manager's info dict, or None: id, mode, study, is_alive, ISO times, count."""
        info = self._info(session_id)
        if info is None:
            return None
        session = ClaudeSession.from_info(info)
        return {
            "session_id": info.session_id,
            "mode": info.mode,
            "study_id": info.study_id,
            "is_alive": session.is_alive(),
            "created_at": session.created_at.isoformat(),
            "last_active": session.last_active.isoformat(),
            "message_count": info.message_count,
        }

    def _info(self, session_id: str) -> SessionInfo | None:
        try:
            return self.runtime.info(session_id)
        except InvalidSessionIdError:
            return None


_manager: SessionManager | None = None
_manager_lock = threading.Lock()


def get_session_manager() -> SessionManager:
    """The process-wide SessionManager (configured from the environment on first call)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = SessionManager()
        return _manager
