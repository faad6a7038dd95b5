"""How a session is labelled for the people who manage it: owner, title, tags, archive, caps.

Pure deciders: each checks its input and returns the events that record the change on the
session as it is now (none when nothing would change), raising InvalidCommandError with a
message that says what to do. The session actor appends what they return; nothing here does
I/O or knows an actor.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Iterable

from ..errors import InvalidCommandError
from ..events import (
    BudgetSet,
    Event,
    SessionArchived,
    SessionInfo,
    SessionTagged,
    SessionTitled,
    SessionUnarchived,
)
from .checks import check_text

MAX_TITLE_CHARS = 200
MAX_TAG_CHARS = 64
MAX_TAGS = 32
AUTO_TITLE_CHARS = 60
"""How much of the first message an automatic title keeps."""

Decider = Callable[[SessionInfo], list[Event]]
"""Decides a change's events from the session's current info."""


def check_owner(owner: str | None) -> None:
    """Refuse an owner that is not a short printable string (None: no owner)."""
    check_text("owner", owner, optional=True)
    if owner is not None and (not owner.strip() or len(owner) > MAX_TITLE_CHARS
                              or not owner.isprintable()):
        raise InvalidCommandError(
            f"owner must be a non-blank printable id of at most {MAX_TITLE_CHARS} characters"
        )


def check_title(title: str) -> str:
    """The title with surrounding blanks removed; refuses a long or unprintable one."""
    check_text("title", title)
    title = " ".join(title.split())
    if len(title) > MAX_TITLE_CHARS:
        raise InvalidCommandError(f"a title is at most {MAX_TITLE_CHARS} characters long")
    if not title.isprintable():
        raise InvalidCommandError("a title must be printable text")
    return title


def check_tag(tag: str) -> str:
    """A tag as stored (Unicode-normalised); refuses a blank, long, spaced or +/- prefixed one."""
    check_text("tag", tag)
    tag = unicodedata.normalize("NFC", tag)
    if not tag or len(tag) > MAX_TAG_CHARS or not tag.isprintable() or any(
        character.isspace() for character in tag
    ):
        raise InvalidCommandError(
            f"a tag is 1 to {MAX_TAG_CHARS} printable characters without spaces, not {tag!r}"
        )
    if tag[0] in "+-":
        raise InvalidCommandError(f"a tag cannot start with '+' or '-': {tag!r}")
    return tag


def title_from_message(text: str) -> str:
    """An automatic title: the first message's first words, at most AUTO_TITLE_CHARS long."""
    words = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(words) <= AUTO_TITLE_CHARS:
        return words
    cut = words[: AUTO_TITLE_CHARS - 1].rsplit(" ", 1)[0] or words[: AUTO_TITLE_CHARS - 1]
    return cut + "…"


def retitle(title: str) -> Decider:
    """Set (or with "" clear) the title."""
    title = check_title(title)

    def decide(info: SessionInfo) -> list[Event]:
        if (info.title or "") == title:
            return []
        return [SessionTitled(title=title)]

    return decide


def retag(add: Iterable[str] = (), remove: Iterable[str] = ()) -> Decider:
    """Add and remove tags (a tag both added and removed is removed)."""
    removed = tuple(dict.fromkeys(check_tag(tag) for tag in remove))
    added = tuple(tag for tag in dict.fromkeys(check_tag(tag) for tag in add)
                  if tag not in removed)

    def decide(info: SessionInfo) -> list[Event]:
        new_added = tuple(tag for tag in added if tag not in info.tags)
        new_removed = tuple(tag for tag in removed if tag in info.tags)
        if not new_added and not new_removed:
            return []
        if len(set(info.tags) - set(new_removed)) + len(new_added) > MAX_TAGS:
            raise InvalidCommandError(f"a session has at most {MAX_TAGS} tags")
        return [SessionTagged(added=new_added, removed=new_removed)]

    return decide


def set_archived(archived: bool) -> Decider:
    """Archive or unarchive the session."""

    def decide(info: SessionInfo) -> list[Event]:
        if info.archived == archived:
            return []
        return [SessionArchived() if archived else SessionUnarchived()]

    return decide


def check_cap(usd: float | None, tokens: int | None) -> None:
    """Refuse a cap that is negative or not a number."""
    if usd is not None and (isinstance(usd, bool) or not isinstance(usd, (int, float))
                            or not math.isfinite(usd) or usd < 0):
        raise InvalidCommandError(f"a USD cap must be a number >= 0, not {usd!r}")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)
                               or tokens < 0):
        raise InvalidCommandError(f"a token cap must be an integer >= 0, not {tokens!r}")


def set_budget(usd: float | None, tokens: int | None) -> Decider:
    """Set the session's caps (None: no cap of that kind)."""
    check_cap(usd, tokens)
    cap_usd = float(usd) if usd is not None else None

    def decide(info: SessionInfo) -> list[Event]:
        if info.budget_usd == cap_usd and info.budget_tokens == tokens:
            return []
        return [BudgetSet(usd=cap_usd, tokens=tokens)]

    return decide
