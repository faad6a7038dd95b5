"""A listing of sessions, newest activity first, filtered by owner, tag and archive flag and
paginated with an opaque cursor.

The cursor names the last session of a page (its last activity and id), so the next page
starts strictly after it in the same order even when sessions are added meanwhile (a session
that becomes active again moves to the front, onto a page already read). Pure: the caller
passes the infos it read from the index.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from datetime import datetime, timezone

import msgspec

from ..errors import InvalidCommandError
from ..events import SessionInfo

DEFAULT_PAGE_SIZE = 50
RESERVED_PREFIX = "~"
"""Streams whose id starts with this hold no session (an owner's budget, say): never listed."""

_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


class SessionPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of a listing and the cursor of the next (None on the last page)."""

    sessions: list[SessionInfo]
    next_cursor: str | None = None


class _Cursor(msgspec.Struct, array_like=True, frozen=True):
    last_active: float
    session_id: str


_cursor_decoder = msgspec.json.Decoder(_Cursor)


def _order_key(info: SessionInfo) -> tuple[float, str]:
    """Sorting by this ascending gives newest activity first, then by id."""
    return (-(info.last_active or _EPOCH).timestamp(), info.session_id)


def encode_cursor(info: SessionInfo) -> str:
    """The cursor that resumes a listing after `info`."""
    moment = (info.last_active or _EPOCH).timestamp()
    raw = msgspec.json.encode(_Cursor(moment, info.session_id))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The order key a cursor names; InvalidCommandError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = _cursor_decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidCommandError(
            f"not a listing cursor: {cursor[:40]!r} (pass the next cursor a listing printed)"
        ) from None
    return (-decoded.last_active, decoded.session_id)


def is_listed(info: SessionInfo) -> bool:
    """Whether a stream of the index is a session a listing shows."""
    return not info.session_id.startswith(RESERVED_PREFIX)


def list_sessions(
    infos: Iterable[SessionInfo],
    *,
    owner: str | None = None,
    tags: Iterable[str] = (),
    archived: bool | None = False,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> SessionPage:
    """A page of sessions, newest activity first: those of `owner` (any owner if None)
    carrying every tag in `tags`, archived or not (`archived`; None for both), after `cursor`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidCommandError(f"limit must be a positive integer, not {limit!r}")
    wanted = set(tags)
    after = decode_cursor(cursor) if cursor else None
    selected = [
        info for info in infos
        if is_listed(info)
        and (owner is None or info.owner == owner)
        and wanted.issubset(info.tags)
        and (archived is None or info.archived == archived)
        and (after is None or _order_key(info) > after)
    ]
    selected.sort(key=_order_key)
    page = selected[:limit]
    more = len(selected) > limit
    return SessionPage(sessions=page, next_cursor=encode_cursor(page[-1]) if more else None)
