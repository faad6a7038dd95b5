"""Does claude's transcript file hold the turns the ledger recorded? The check made before a
live agent process resumes a session (`--resume`), so a turn lost in claude's flush window
is noticed instead of silently forgotten.

claude writes its transcript 36-93 ms after the `result` line; a SIGKILL in that window
loses the turn from the file, and a `--resume` then goes on without it. A turn is held when
the file has the user entry whose `uuid` is the ledger's id for the turn (a live turn's user
line carries it) followed by an assistant entry that says the recorded answer; a turn run
without that id (a cold turn) is held when some assistant entry says its answer. This
module only reads the file; the caller decides how to re-seed what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple


class TurnMark(NamedTuple):
    """How to find one recorded turn in the transcript: the uuid its user line carried
    (None when the agent was not given one) and its recorded answer text."""

    turn_id: str | None
    answer: str


def _texts(entry: dict[str, Any]) -> list[str]:
    """The text blocks of an assistant entry."""
    message = entry.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [str(block.get("text", "")) for block in content
            if isinstance(block, dict) and block.get("type") == "text"]


def _entries(path: Path) -> list[dict[str, Any]] | None:
    """The file's entries (unreadable lines skipped); None if there is no file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return []
    entries = []
    for line in data.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def _says(texts: list[str], answer: str) -> bool:
    wanted = answer.strip()
    if not wanted:
        return True
    return any(text.strip() == wanted for text in texts) or wanted in "".join(texts)


def _held(entries: list[dict[str, Any]], mark: TurnMark) -> bool:
    if mark.turn_id is None:
        return any(entry.get("type") == "assistant" and _says(_texts(entry), mark.answer)
                   for entry in entries)
    for index, entry in enumerate(entries):
        if entry.get("uuid") == mark.turn_id:
            answers = [later for later in entries[index + 1:] if later.get("type") == "assistant"]
            return bool(answers) and _says([text for later in answers for text in _texts(later)],
                                           mark.answer)
    return False


def missing_turns(path: Path, turns: Sequence[TurnMark]) -> int:
    """How many of `turns` (oldest first), counted from the newest, the transcript at
    `path` lacks: 0 when it holds the newest, len(turns) when it holds none (or there is no
    file). Reads the file once; BLOCKING (file I/O)."""
    if not turns:
        return 0
    entries = _entries(path)
    if entries is None:
        return len(turns)
    missing = 0
    for mark in reversed(turns):
        if _held(entries, mark):
            break
        missing += 1
    return missing
