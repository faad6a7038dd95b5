"""claude's `transcript_mirror` frames: recognise one, and name the transcript it belongs to.

With `--session-mirror`, claude prints `{"type": "transcript_mirror", "filePath": ...,
"entries": [...]}` beside its stream-json lines: the entries it has just appended to its
transcript file. The file lives at `<projects dir>/<project key>/<session id>.jsonl` (a
subagent's at `<project key>/<session id>/<subpath>.jsonl`), where the projects dir is
`$CLAUDE_CONFIG_DIR/projects`, else `$HOME/.claude/projects`. This module turns a frame into
that key (the same `TranscriptKey` the Agent SDK session store uses, so both write the same
ledger sessions) and a key back into a path. It does no I/O.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, NamedTuple

from ..sdk_store.keys import TranscriptKey

MIRROR_TYPE = "transcript_mirror"
SUFFIX = ".jsonl"
MAX_PROJECT_KEY_CHARS = 200
_NOT_ALPHANUMERIC = re.compile(r"[^a-zA-Z0-9]")


class MirrorFrame(NamedTuple):
    """One `transcript_mirror` line: the transcript file it mirrors and the entries added."""

    file_path: str
    entries: list[Any]


def mirror_frame(message: Any) -> MirrorFrame | None:
    """The frame a decoded stdout line carries, or None if it is no (well-formed) frame."""
    if not isinstance(message, Mapping) or message.get("type") != MIRROR_TYPE:
        return None
    file_path, entries = message.get("filePath"), message.get("entries")
    if not isinstance(file_path, str) or not file_path or not isinstance(entries, list):
        return None
    return MirrorFrame(file_path, entries)


def projects_dir(environment: Mapping[str, str]) -> Path:
    """Where claude keeps transcripts for an agent environment (CLAUDE_CONFIG_DIR, else HOME)."""
    config = environment.get("CLAUDE_CONFIG_DIR")
    if config:
        return Path(config) / "projects"
    home = environment.get("HOME") or environment.get("USERPROFILE") or str(Path.home())
    return Path(home) / ".claude" / "projects"


def _string_hash_base36(text: str) -> str:
    """JavaScript's classic 32-bit string hash (h = 31 h + code unit), absolute, in base 36:
    what claude appends to a shortened project directory name."""
    value = 0
    encoded = text.encode("utf-16-le", "surrogatepass")
    for index in range(0, len(encoded), 2):
        value = (value * 31 + int.from_bytes(encoded[index:index + 2], "little")) & 0xFFFFFFFF
    if value >= 0x80000000:
        value -= 0x100000000
    value = abs(value)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        value, remainder = divmod(value, 36)
        out = digits[remainder] + out
        if value == 0:
            return out


def project_key_for_directory(directory: str | os.PathLike[str]) -> str:
    """The name claude gives the transcript directory of a working directory (its real path,
    NFC, every non-alphanumeric a '-', shortened with a hash past 200 characters): the
    Agent SDK's `project_key` for it too."""
    path = unicodedata.normalize("NFC", os.path.realpath(os.fspath(directory)))
    name = _NOT_ALPHANUMERIC.sub("-", path)
    if len(name) <= MAX_PROJECT_KEY_CHARS:
        return name
    return f"{name[:MAX_PROJECT_KEY_CHARS]}-{_string_hash_base36(path)}"


def key_for_transcript_file(file_path: str | os.PathLike[str],
                            projects: str | os.PathLike[str]) -> TranscriptKey | None:
    """The key of a transcript file under `projects`, or None for a path outside it or of
    another shape (never a key that climbs out with '..')."""
    try:
        relative = PurePath(os.path.normpath(file_path)).relative_to(os.path.normpath(projects))
    except ValueError:
        return None
    parts = relative.parts
    if len(parts) < 2 or any(part in ("", ".", "..") for part in parts) \
            or not parts[-1].endswith(SUFFIX) or len(parts) == 3:
        return None
    if len(parts) == 2:
        session = parts[1][: -len(SUFFIX)]
        return TranscriptKey(parts[0], session) if session else None
    subpath = "/".join((*parts[2:-1], parts[-1][: -len(SUFFIX)]))
    return TranscriptKey(parts[0], parts[1], subpath)


def transcript_file(projects: str | os.PathLike[str], key: TranscriptKey) -> Path:
    """Where claude reads and writes the transcript under `key` (the inverse of
    `key_for_transcript_file`); ValueError for a key that would leave `projects`."""
    pieces = [key.project_key, key.session_id, *(key.subpath.split("/") if key.subpath else ())]
    if any(piece in ("", ".", "..") or "\\" in piece or "/" in piece or "\x00" in piece
           for piece in pieces):
        raise ValueError(f"{key} cannot name a transcript file")
    *directories, last = pieces
    return Path(projects).joinpath(*directories, last + SUFFIX)
