"""How a Claude Agent SDK `SessionKey` becomes a chatledger session id, and back to its parts.

The SDK names a transcript by `project_key` (a sanitised working directory or a tenant name,
up to ~210 characters), `session_id` (a UUID in practice, any string in the contract) and an
optional `subpath` ("subagents/agent-<id>"). A chatledger id must be short, printable, free
of path separators, and usable as a file name on every platform (storage/ids.py). The
mapping is deterministic, so every process and node finds the same ledger session for a key:

    sdk_<20 hex of SHA-256(project_key)>_<session part>                 main transcript
    sdk_<20 hex of SHA-256(project_key)>_<session part>_<20 hex of SHA-256(subpath)>

The session part is the SDK session id itself when it is 1-64 characters of `[A-Za-z0-9-]`
(every UUID), else `=` and 32 hex of its SHA-256 ('=' never occurs in a verbatim part, and
'_' in neither, so the parts split without ambiguity). The ids alone do not carry the
project key or subpath: every transcript event records the key parts in full, and readers
match on them, so even a hash collision could only make two keys share one stream, never
mix their entries. This module does no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

PREFIX = "sdk"
"""Every ledger session the SDK store writes has an id starting `sdk_`."""

_VERBATIM = re.compile(r"[A-Za-z0-9-]{1,64}")
_PROJECT_HEX = 20
_SUBPATH_HEX = 20
_SESSION_HEX = 32


class TranscriptKey(NamedTuple):
    """A validated SDK SessionKey: project, session and subpath (None for the main one)."""

    project_key: str
    session_id: str
    subpath: str | None = None


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def transcript_key(key: Mapping[str, Any]) -> TranscriptKey:
    """Check an SDK SessionKey's shape and return its parts; ValueError says what is wrong."""
    project_key = key.get("project_key")
    session_id = key.get("session_id")
    subpath = key.get("subpath")
    if not isinstance(project_key, str) or not project_key:
        raise ValueError(f"a SessionKey needs a non-empty string project_key, not {project_key!r}")
    if not isinstance(session_id, str) or not session_id:
        raise ValueError(f"a SessionKey needs a non-empty string session_id, not {session_id!r}")
    if subpath is not None and (not isinstance(subpath, str) or not subpath):
        raise ValueError(
            f"a SessionKey's subpath must be a non-empty string or absent, not {subpath!r}"
        )
    return TranscriptKey(project_key, session_id, subpath)


def project_prefix(project_key: str) -> str:
    """The start every ledger id of this project's transcripts shares (ends with '_')."""
    return f"{PREFIX}_{_digest(project_key, _PROJECT_HEX)}_"


def session_part(session_id: str) -> str:
    """The SDK session id as it appears in a ledger id: verbatim if tame, else a digest."""
    if _VERBATIM.fullmatch(session_id):
        return session_id
    return "=" + _digest(session_id, _SESSION_HEX)


def main_session_id(project_key: str, session_id: str) -> str:
    """The ledger id of a session's main transcript."""
    return project_prefix(project_key) + session_part(session_id)


def ledger_session_id(key: Mapping[str, Any] | TranscriptKey) -> str:
    """The chatledger session id that holds the transcript under an SDK SessionKey."""
    parts = key if isinstance(key, TranscriptKey) else transcript_key(key)
    main = main_session_id(parts.project_key, parts.session_id)
    if parts.subpath is None:
        return main
    return f"{main}_{_digest(parts.subpath, _SUBPATH_HEX)}"


def is_main_id(ledger_id: str, project_key: str) -> bool:
    """Whether a ledger id is a main transcript of this project (not a subpath, not another's)."""
    prefix = project_prefix(project_key)
    return ledger_id.startswith(prefix) and "_" not in ledger_id[len(prefix):]


def is_subkey_id(ledger_id: str, main_id: str) -> bool:
    """Whether a ledger id holds a subpath transcript of the session whose main id is given."""
    prefix = main_id + "_"
    return ledger_id.startswith(prefix) and "_" not in ledger_id[len(prefix):]
