"""`LedgerSessionStore`: the Claude Agent SDK's `SessionStore`, kept in a chatledger ledger.

The SDK mirrors claude's transcript through it (`ClaudeAgentOptions(session_store=...)`) and
loads it back to resume a session anywhere. Each SDK key is one ledger session (see
`keys.py`); each `append` becomes one `TranscriptEntriesAppended` event, durable and
hash-chained when the call returns, with entries already kept (same `uuid`) left out; a
`delete` records `TranscriptDeleted` (the entries stay until redaction removes them, so
`chatledger verify` stays clean). Appends use the store port's expected versions, so several
processes or nodes may write one ledger: a stale version re-reads what the others wrote and
tries again.

The SDK protocol is async. Every method runs its store calls on a worker thread (anyio, so
it works under asyncio and trio alike) and never blocks the event loop on an LMDB commit or
a read; each also has a `*_blocking` twin for callers on plain threads (chatledger's own
runs). Only the summaries need the SDK installed (its `fold_session_summary`). This module knows the store only through the port's methods (`append`,
`read_session`, `latest`, `info`, `sessions`); it builds a store in one place,
`open_ledger_store`, and starts no processes.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from ..errors import ConcurrencyError, InvalidEventError, LedgerError
from ..events.codec import storable
from ..events.model import Recorded, TranscriptDeleted, TranscriptEntriesAppended
from ..events.projections import SessionInfo, transcript_entries
from ..storage import EventStore, open_store
from .keys import (
    TranscriptKey,
    is_main_id,
    is_subkey_id,
    ledger_session_id,
    main_session_id,
    transcript_key,
)

Result = TypeVar("Result")

MAX_APPEND_ATTEMPTS = 20
"""How often an append re-reads and retries after other writers moved the session on."""

TAIL_CACHE_SESSIONS = 1024
"""How many sessions' append state (version, uuids kept, summary) one store remembers."""

DELETE_REASON = "deleted through the Claude Agent SDK session store"

SummaryFold = Callable[[Any, Mapping[str, Any], list[Any]], Any]
"""`fold_session_summary(prev, key, entries)` as the SDK defines it."""


def open_ledger_store(location: str | os.PathLike[str]) -> EventStore:
    """Open the chatledger store at `location` (a ledger directory, `memory:`, ...) through
    the store factory."""
    return open_store(location)


def _sdk_summary_fold() -> SummaryFold | None:
    """The SDK's own summary fold, or None when the SDK is not installed."""
    try:
        from claude_agent_sdk import fold_session_summary
    except ImportError:
        return None
    fold: SummaryFold = fold_session_summary  # type: ignore[assignment]
    return fold


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold off Python's cycle collector while a transcript is decoded.

    A 10,000-entry transcript decodes into some 100,000 fresh dicts and lists; each one
    counts towards the collector's thresholds, so it would run full passes over a growing
    heap in the middle of the decode (3-5x the decode time, measured with
    benchmarks/sdk_store.py). The entries hold no cycles; collection resumes right after,
    and a collector someone else turned off stays off.
    """
    was_enabled = gc.isenabled()
    if was_enabled:
        gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def epoch_ms(moment: datetime | None) -> int:
    """A record time as Unix epoch milliseconds (the SDK's `mtime`)."""
    return int(moment.timestamp() * 1000) if moment is not None else 0


@dataclass
class _Tail:
    """What an append needs to know of one key's transcript, as of a session version."""

    version: int = 0
    live: bool = False
    uuids: set[str] = field(default_factory=set)
    summary: Any = None
    count: int = 0
    last_uuid: str | None = None

    def fold(self, records: Iterable[Recorded], key: TranscriptKey) -> None:
        """Bring the tail up to date with records that followed it. Pure bookkeeping."""
        for recorded in records:
            self.version = recorded.version
            event = recorded.event
            if not _matches(event, key.project_key, key.session_id) \
                    or event.subpath != key.subpath:
                continue
            if isinstance(event, TranscriptDeleted):
                self.live, self.summary, self.count, self.last_uuid = False, None, 0, None
                self.uuids.clear()
                continue
            self.live = True
            self.count += len(event.entries)
            for uuid in _uuids(event.entries):
                self.uuids.add(uuid)
                self.last_uuid = uuid
            if event.summary is not None:
                self.summary = event.summary


def _uuids(entries: Iterable[Any]) -> Iterable[str]:
    for entry in entries:
        if isinstance(entry, dict):
            uuid = entry.get("uuid")
            if isinstance(uuid, str):
                yield uuid


def _new_entries(entries: Iterable[Any], kept: set[str]) -> list[Any]:
    """The entries whose uuid is not kept yet (nor earlier in the batch); uuid-less ones all."""
    seen: set[str] = set()
    fresh = []
    for entry in entries:
        uuid = entry.get("uuid") if isinstance(entry, dict) else None
        if isinstance(uuid, str):
            if uuid in kept or uuid in seen:
                continue
            seen.add(uuid)
        fresh.append(entry)
    return fresh


class LedgerSessionStore:
    """A Claude Agent SDK `SessionStore` over a chatledger event store (all six methods).

    `LedgerSessionStore.open(path)` opens the ledger at `path` and closes it with `close()`;
    `LedgerSessionStore(store)` uses a store you opened (and leaves it open). One instance
    may serve any number of SDK sessions and tasks at once. Its async methods are safe to
    call from any event loop; the blocking work runs on anyio's worker threads.
    """

    def __init__(self, store: EventStore, *, close_store: bool = False,
                 summaries: bool = True) -> None:
        self.store = store
        self._close_store = close_store
        self._fold = _sdk_summary_fold() if summaries else None
        self._tails: OrderedDict[str, _Tail] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, summaries: bool = True) -> LedgerSessionStore:
        """A store over the ledger at `path`, which `close()` closes."""
        return cls(open_ledger_store(path), close_store=True, summaries=summaries)

    def close(self) -> None:
        """Close the ledger if this store opened it."""
        if self._close_store:
            self.store.close()

    def __enter__(self) -> LedgerSessionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the SessionStore protocol (async; the work runs on a worker thread) -------------------

    async def append(self, key: Mapping[str, Any], entries: list[Any]) -> None:
        """Keep a batch of transcript entries, durably, skipping uuids already kept."""
        await self._in_thread(self.append_blocking, key, entries)

    async def load(self, key: Mapping[str, Any]) -> list[Any] | None:
        """Every entry kept under `key`, in order; None if none (never written or deleted)."""
        return await self._in_thread(self.load_blocking, key)

    async def list_sessions(self, project_key: str) -> list[dict[str, Any]]:
        """The project's main transcripts: `session_id` and `mtime` (epoch ms)."""
        return await self._in_thread(self.list_sessions_blocking, project_key)

    async def list_session_summaries(self, project_key: str) -> list[dict[str, Any]]:
        """The SDK's summary of each of the project's main transcripts (no replay)."""
        return await self._in_thread(self.list_session_summaries_blocking, project_key)

    async def delete(self, key: Mapping[str, Any]) -> None:
        """Record the deletion of a transcript (a main one: with all its subpaths)."""
        await self._in_thread(self.delete_blocking, key)

    async def list_subkeys(self, key: Mapping[str, Any]) -> list[str]:
        """The subpaths kept under a session (subagent transcripts)."""
        return await self._in_thread(self.list_subkeys_blocking, key)

    @staticmethod
    async def _in_thread(function: Callable[..., Result], *args: Any) -> Result:
        call = functools.partial(function, *args)
        try:
            import anyio.to_thread
        except ImportError:  # no SDK (it brings anyio): asyncio is the only loop then
            import asyncio

            return await asyncio.to_thread(call)
        return await anyio.to_thread.run_sync(call)

    # -- the same, blocking the calling thread -----------------------------------------------

    def append_blocking(self, key: Mapping[str, Any], entries: list[Any], *, turn: int = 0,
                        turn_session_id: str | None = None) -> int:
        """`append`, on the calling thread (blocks until the ledger commit); returns how many
        entries were new. `turn` and `turn_session_id` tie them to a chatledger turn."""
        parts = transcript_key(key)
        if not entries:
            return 0
        ledger_id = ledger_session_id(parts)
        with self._lock(ledger_id):
            for _ in range(MAX_APPEND_ATTEMPTS):
                tail = self._tail(ledger_id, parts)
                fresh = _new_entries(entries, tail.uuids)
                if not fresh:
                    return 0
                summary = self._folded_summary(tail, parts, fresh)
                if summary is not None and summary == tail.summary:
                    summary = None  # unchanged: readers take the last one kept
                event = functools.partial(
                    TranscriptEntriesAppended, project_key=parts.project_key,
                    agent_session_id=parts.session_id, subpath=parts.subpath, turn=turn,
                    turn_session_id=turn_session_id)
                try:
                    recorded = self._append_event(ledger_id, event, fresh, summary, tail.version)
                except ConcurrencyError:
                    self._catch_up(ledger_id, parts, tail)
                    continue
                tail.fold(recorded, parts)
                return len(fresh)
        raise _gave_up(ledger_id)

    def extent_blocking(self, key: Mapping[str, Any]) -> tuple[int, str | None]:
        """How many entries `load` would return for `key`, and the uuid of the last one that
        has a uuid: from this store's remembered tail, caught up with the ledger (a read of
        the records since, not of the transcript). (0, None) if none are kept."""
        parts = transcript_key(key)
        ledger_id = ledger_session_id(parts)
        with self._lock(ledger_id):
            tail = self._tail(ledger_id, parts)
            self._catch_up(ledger_id, parts, tail)
            return (tail.count, tail.last_uuid) if tail.live else (0, None)

    def load_blocking(self, key: Mapping[str, Any]) -> list[Any] | None:
        """`load`, on the calling thread."""
        parts = transcript_key(key)
        with _collector_paused():
            records = self.store.read_session(ledger_session_id(parts))
        return transcript_entries(records, parts.project_key, parts.session_id, parts.subpath)

    def list_sessions_blocking(self, project_key: str) -> list[dict[str, Any]]:
        """`list_sessions`, on the calling thread."""
        return [{"session_id": event.agent_session_id, "mtime": epoch_ms(info.last_active)}
                for info, event in self._live_mains(project_key)]

    def list_session_summaries_blocking(self, project_key: str) -> list[dict[str, Any]]:
        """`list_session_summaries`, on the calling thread."""
        summaries = []
        for info, event in self._live_mains(project_key):
            parts = TranscriptKey(project_key, event.agent_session_id)
            data = event.summary
            if data is None:
                data = self._last_summary(ledger_session_id(parts), parts)
            if data is None:  # written without summaries: fold the transcript once
                data = self._summary_of(parts)
            # mtime: the session's last write, the clock list_sessions reports too.
            summaries.append({"session_id": event.agent_session_id,
                              "mtime": epoch_ms(info.last_active), "data": data})
        return summaries

    def delete_blocking(self, key: Mapping[str, Any]) -> None:
        """`delete`, on the calling thread: the main key first, then each subpath under it."""
        parts = transcript_key(key)
        self._record_deletion(ledger_session_id(parts), parts)
        if parts.subpath is not None:
            return
        for ledger_id, event in self._subkey_events(parts):
            if isinstance(event, TranscriptEntriesAppended):
                self._record_deletion(
                    ledger_id, TranscriptKey(parts.project_key, parts.session_id, event.subpath)
                )

    def list_subkeys_blocking(self, key: Mapping[str, Any]) -> list[str]:
        """`list_subkeys`, on the calling thread."""
        parts = transcript_key(key)
        return sorted(str(event.subpath) for _, event in self._subkey_events(parts)
                      if isinstance(event, TranscriptEntriesAppended))

    # -- helpers ---------------------------------------------------------------------------------

    def _lock(self, ledger_id: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(ledger_id)
            if lock is None:
                lock = self._locks[ledger_id] = threading.Lock()
            return lock

    def _tail(self, ledger_id: str, parts: TranscriptKey) -> _Tail:
        """The remembered tail of a session (read from the ledger the first time). Caller holds
        the session's lock."""
        with self._guard:
            tail = self._tails.get(ledger_id)
            if tail is not None:
                self._tails.move_to_end(ledger_id)
                return tail
        tail = _Tail()
        self._catch_up(ledger_id, parts, tail)
        with self._guard:
            self._tails[ledger_id] = tail
            while len(self._tails) > TAIL_CACHE_SESSIONS:
                self._tails.popitem(last=False)
        return tail

    def _catch_up(self, ledger_id: str, parts: TranscriptKey, tail: _Tail) -> None:
        """Fold in what was written after the tail's version (by another process, say)."""
        tail.fold(self.store.read_session(ledger_id, tail.version + 1), parts)

    def _folded_summary(self, tail: _Tail, parts: TranscriptKey, fresh: list[Any]) -> Any:
        """The SDK summary after `fresh` (main transcripts only), or None without the SDK."""
        if self._fold is None or parts.subpath is not None:
            return None
        previous = None if tail.summary is None else {
            "session_id": parts.session_id, "mtime": 0, "data": tail.summary}
        key = {"project_key": parts.project_key, "session_id": parts.session_id}
        return self._fold(previous, key, fresh)["data"]

    def _append_event(self, ledger_id: str, event: Callable[..., TranscriptEntriesAppended],
                      entries: list[Any], summary: Any, expected_version: int) -> list[Recorded]:
        try:
            return self.store.append(
                ledger_id, [event(entries=tuple(entries), summary=summary)], expected_version)
        except InvalidEventError:  # a value MessagePack cannot hold (an integer past 2**64)
            return self.store.append(
                ledger_id, [event(entries=tuple(storable(entries)), summary=storable(summary))],
                expected_version)

    def _record_deletion(self, ledger_id: str, parts: TranscriptKey) -> None:
        with self._lock(ledger_id):
            for _ in range(MAX_APPEND_ATTEMPTS):
                tail = self._tail(ledger_id, parts)
                if not tail.live:
                    return
                deleted = TranscriptDeleted(
                    project_key=parts.project_key, agent_session_id=parts.session_id,
                    subpath=parts.subpath, reason=DELETE_REASON)
                try:
                    recorded = self.store.append(ledger_id, [deleted], tail.version)
                except ConcurrencyError:
                    self._catch_up(ledger_id, parts, tail)
                    continue
                tail.fold(recorded, parts)
                return
        raise _gave_up(ledger_id)

    def _last_transcript_event(
        self, ledger_id: str, project_key: str, session_id: str | None = None
    ) -> tuple[SessionInfo | None, Any]:
        """A session's info and its last transcript event of this project (and session), or
        None: other events (an expiry sweep's) may follow it, so look further back if need be."""
        info, records = self.store.latest(ledger_id, 4)
        if info is not None and len(records) < info.version and not any(
            _matches(recorded.event, project_key, session_id) for recorded in records
        ):
            records = self.store.read_session(ledger_id)
        for recorded in reversed(records):
            if _matches(recorded.event, project_key, session_id):
                return info, recorded.event
        return info, None

    def _last_summary(self, ledger_id: str, parts: TranscriptKey) -> Any:
        """The last summary kept for a live main transcript (an append that left the summary
        as it was keeps none), looking back through ever larger tails; None if there is none
        since the transcript's last deletion."""
        window = 16
        while True:
            info, records = self.store.latest(ledger_id, window)
            for recorded in reversed(records):
                event = recorded.event
                if not _matches(event, parts.project_key, parts.session_id) \
                        or event.subpath is not None:
                    continue
                if isinstance(event, TranscriptDeleted):
                    return None
                if event.summary is not None:
                    return event.summary
            if info is None or len(records) >= info.version:
                return None
            window *= 8

    def _live_mains(self, project_key: str) -> list[tuple[SessionInfo, TranscriptEntriesAppended]]:
        """(index info, last transcript event) of the project's main transcripts not deleted."""
        live = []
        for listed in self.store.sessions():
            if not is_main_id(listed.session_id, project_key):
                continue
            info, event = self._last_transcript_event(listed.session_id, project_key)
            if info is not None and isinstance(event, TranscriptEntriesAppended) \
                    and event.subpath is None:
                live.append((info, event))
        return live

    def _subkey_events(self, parts: TranscriptKey) -> list[tuple[str, Any]]:
        """(ledger id, last transcript event) of every subpath transcript under a session."""
        main_id = main_session_id(parts.project_key, parts.session_id)
        found = []
        for listed in self.store.sessions():
            if not is_subkey_id(listed.session_id, main_id):
                continue
            _, event = self._last_transcript_event(
                listed.session_id, parts.project_key, parts.session_id)
            if event is not None and event.subpath is not None:
                found.append((listed.session_id, event))
        return found

    def _summary_of(self, parts: TranscriptKey) -> Any:
        """The SDK summary of a whole transcript, folded now (for entries kept without one)."""
        entries = self.load_blocking(parts._asdict()) or []
        if self._fold is None:
            return {}
        key = {"project_key": parts.project_key, "session_id": parts.session_id}
        return self._fold(None, key, entries)["data"]


def _matches(event: Any, project_key: str, session_id: str | None) -> bool:
    return (isinstance(event, (TranscriptEntriesAppended, TranscriptDeleted))
            and event.project_key == project_key
            and (session_id is None or event.agent_session_id == session_id))


def _gave_up(ledger_id: str) -> LedgerError:
    return LedgerError(
        f"gave up writing to {ledger_id!r} after {MAX_APPEND_ATTEMPTS} attempts: other writers "
        "kept moving it on; the SDK retries the batch"
    )
