"""Session id validation: ids become LMDB keys, file names and CLI arguments, so keep them tame.

This module must not touch storage; it only says whether an id is acceptable.
"""

from __future__ import annotations

import re

from ..errors import InvalidSessionIdError

MAX_SESSION_ID_CHARS = 128
MAX_SESSION_ID_BYTES = 256
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""Control characters (C0, DEL, C1) and lone surrogates."""


def validate_session_id(session_id: object) -> str:
    """Return `session_id` if it is a usable id, else raise InvalidSessionIdError saying why."""
    if not isinstance(session_id, str):
        raise InvalidSessionIdError(
            f"session id must be a string, not {type(session_id).__name__}"
        )
    if not session_id:
        raise InvalidSessionIdError("session id is empty")
    if len(session_id) > MAX_SESSION_ID_CHARS:
        raise InvalidSessionIdError(
            f"session id is {len(session_id)} characters long; at most "
            f"{MAX_SESSION_ID_CHARS} are allowed"
        )
    if session_id in (".", "..") or "/" in session_id or "\\" in session_id:
        raise InvalidSessionIdError(
            f"session id {session_id[:40]!r} looks like a path; '/', '\\\\', '.' and '..' "
            "are not allowed"
        )
    unprintable = _UNPRINTABLE.search(session_id)
    if unprintable is not None:
        raise InvalidSessionIdError(
            f"session id holds a control or undecodable character "
            f"(U+{ord(unprintable.group()):04X}); use printable characters only"
        )
    if len(session_id.encode("utf-8")) > MAX_SESSION_ID_BYTES:
        raise InvalidSessionIdError(
            f"session id is longer than {MAX_SESSION_ID_BYTES} bytes in UTF-8"
        )
    return session_id
