"""Write claude's transcript file from the ledger before a turn resumes claude's session.

`claude --resume <id>` reads `<projects dir>/<project key>/<id>.jsonl`; on another node, in a
fresh container, after claude's 30-day clean-up, or after a SIGKILL in the flush window the
file is missing or short. `restore_transcript` compares the file with what the ledger holds
under the same key and, when the ledger has entries the file lacks, writes the file from the
ledger (subagent transcripts too), atomically (a temporary file renamed into place) and
private (0600 in 0700 directories). It returns what it did so the caller can record a
`TranscriptRestored`; a file that already holds every ledger entry is left alone, found so
by a quick check (line count and the last uuid; no line parsed, the ledger side from the
store's remembered tail) on the way to every resume. It reads the ledger and writes files;
it starts no processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

from ..sdk_store.keys import TranscriptKey
from ..sdk_store.store import LedgerSessionStore
from .mirror import transcript_file

REASON_MISSING = "missing"
REASON_BEHIND = "behind"


class Restored(NamedTuple):
    """A transcript file written from the ledger: where, how many entries, and why."""

    path: Path
    entry_count: int
    reason: str  # REASON_MISSING or REASON_BEHIND
    subagent_files: int = 0


def _on_disk(path: Path) -> list[Any] | None:
    """The entries of a transcript file (unreadable lines skipped), or None if there is none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    entries = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries


def _seems_complete(path: Path, count: int, last_uuid: str | None) -> bool:
    """The quick check before every resume: the file has at least as many lines as the
    ledger has entries, and holds the ledger's last uuid. A file that fails it is compared
    entry by entry (`_lacks`); one that passes is left alone without parsing a line."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1) < count:
        return False
    if last_uuid is None:
        return True
    quoted = json.dumps(last_uuid).encode()
    return b'"uuid":' + quoted in data or b'"uuid": ' + quoted in data


def _fingerprint(entry: Any) -> str:
    uuid = entry.get("uuid") if isinstance(entry, dict) else None
    return f"uuid:{uuid}" if isinstance(uuid, str) else "json:" + json.dumps(entry, sort_keys=True)


def _lacks(on_disk: list[Any], kept: list[Any]) -> bool:
    """Whether the file misses any entry the ledger holds (by uuid, else by content)."""
    present: dict[str, int] = {}
    for entry in on_disk:
        mark = _fingerprint(entry)
        present[mark] = present.get(mark, 0) + 1
    for entry in kept:
        mark = _fingerprint(entry)
        if present.get(mark, 0) == 0:
            return True
        present[mark] -= 1
    return False


def write_transcript(path: Path, entries: list[Any]) -> None:
    """Write entries as claude's JSONL (`type` first on each line), atomically, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = "".join(
        json.dumps({"type": entry["type"], **entry} if isinstance(entry, dict) and "type" in entry
                   else entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        for entry in entries
    )
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".restore-", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


Extent = tuple[int, "str | None"]
"""A transcript's entry count in the ledger and its last uuid (`extent_blocking`)."""


class CompleteFiles:
    """Transcript files this process found complete, with their size and mtime and the
    ledger's extent at the time: while neither moved, a resume needs no read of the file.
    Thread-safe; remembers at most `limit` files (the least recently used go)."""

    def __init__(self, limit: int = 4096) -> None:
        self._seen: OrderedDict[Path, tuple[int, int, Extent]] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    @staticmethod
    def _stat(path: Path) -> tuple[int, int] | None:
        try:
            status = path.stat()
        except OSError:
            return None
        return status.st_size, status.st_mtime_ns

    def vouch(self, path: Path, extent: Extent) -> bool:
        """Whether the file is as it was when found complete against this same extent."""
        now = self._stat(path)
        with self._lock:
            seen = self._seen.get(path)
        return now is not None and seen is not None and seen == (*now, extent)

    def note(self, path: Path, extent: Extent) -> None:
        """Remember the file, as it is now, as complete against `extent`."""
        now = self._stat(path)
        if now is None:
            return
        with self._lock:
            self._seen[path] = (*now, extent)
            self._seen.move_to_end(path)
            while len(self._seen) > self._limit:
                self._seen.popitem(last=False)


def note_if_complete(store: LedgerSessionStore, projects: str | os.PathLike[str],
                     project_key: str, session_id: str, complete_files: CompleteFiles) -> bool:
    """After a turn: check (quickly, no line parsed) that claude's file holds what the ledger
    holds, and remember it if so, so the next resume on this node reads nothing."""
    key = TranscriptKey(project_key, session_id)
    extent = store.extent_blocking(key._asdict())
    path = transcript_file(projects, key)
    if extent[0] == 0 or not _seems_complete(path, *extent):
        return False
    complete_files.note(path, extent)
    return True


def restore_transcript(store: LedgerSessionStore, projects: str | os.PathLike[str],
                       project_key: str, session_id: str,
                       complete_files: CompleteFiles | None = None) -> Restored | None:
    """Write the transcript of claude session `session_id` under `projects` from the ledger if
    the file is missing or lacks entries the ledger holds; None if nothing needed writing
    (or the ledger holds no transcript for it). `complete_files` (optional) remembers files
    found complete, so an unchanged one is vouched for by its size and mtime alone."""
    key = TranscriptKey(project_key, session_id)
    extent = store.extent_blocking(key._asdict())
    if extent[0] == 0:
        return None
    path = transcript_file(projects, key)
    if complete_files is not None and complete_files.vouch(path, extent):
        return None
    if _seems_complete(path, *extent):
        if complete_files is not None:
            complete_files.note(path, extent)
        return None
    kept = store.load_blocking(key._asdict())
    if not kept:
        return None
    on_disk = _on_disk(path)
    if on_disk is not None and not _lacks(on_disk, kept):
        return None
    write_transcript(path, kept)
    if complete_files is not None:
        complete_files.note(path, extent)
    subagent_files = 0
    for subpath in store.list_subkeys_blocking(key._asdict()):
        sub_key = TranscriptKey(project_key, session_id, subpath)
        sub_entries = store.load_blocking(sub_key._asdict())
        if sub_entries:
            write_transcript(transcript_file(projects, sub_key), sub_entries)
            subagent_files += 1
    return Restored(path, len(kept), REASON_MISSING if on_disk is None else REASON_BEHIND,
                    subagent_files)
