"""Redaction planning: which records of a session lose their content, and what is written.

Pure: given a session's stored values, the versions to redact (None: every one whose content
is still there) and who asks why, it decides the new stored value of each record (the same
bytes with the event (its salt in it) replaced by nil: the hash, and so every link, unchanged),
the `Redacted` events to append, and the session's info folded again over the redacted
records. Every store calls it inside its own write transaction or lock, then writes the
plan. A record written before the redaction-ready format (format 1), or one that fails its
own check, is refused: its content cannot go without breaking (or laundering) its hash.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from ..errors import InvalidCommandError
from ..events.codec import decode_record, decode_sealed
from ..events.content import has_content
from ..events.model import Recorded, Redacted, tag_of
from ..events.projections import SessionInfo, evolve
from .hashing import CONTENT_KEPT, CONTENT_PLAIN, CONTENT_REDACTED, HASH_SIZE, examine_record
from .hashing import without_content as remove_content
from .records import StoredValue

MAX_REASON_CHARS = 1000


class RedactionRefusedError(InvalidCommandError):
    """A redaction that cannot be done as asked; nothing was changed."""


class RedactionPlan(msgspec.Struct, kw_only=True):
    """What a redaction writes: the rewritten records (position, new stored value), the
    Redacted events to append, and the session's info before them, folded again."""

    rewrites: list[tuple[int, bytes]]
    events: list[Redacted]
    info: SessionInfo


def without_content(value: bytes) -> bytes:
    """A format-2 stored value (hash + record) with its event (its salt in it) replaced by nil."""
    return value[:HASH_SIZE] + remove_content(value[HASH_SIZE:])


def check_words(name: str, value: str | None, *, optional: bool) -> None:
    """Refuse a reason or a name that is not a short string."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    if len(value) > MAX_REASON_CHARS:
        raise RedactionRefusedError(f"{name} is at most {MAX_REASON_CHARS} characters long")


def plan_redaction(
    session_id: str,
    values: Sequence[StoredValue],
    version: int | None,
    *,
    reason: str,
    redacted_by: str | None,
) -> RedactionPlan:
    """The redaction of `version` of a session (None: every record whose content is still
    there) from its stored values, in version order; RedactionRefusedError if it cannot be
    done (unknown version, an event without content, already redacted, format 1, damaged)."""
    check_words("reason", reason, optional=False)
    check_words("redacted_by", redacted_by, optional=True)
    records: list[Recorded] = []
    states: list[str] = []
    named: set[int] = set()  # versions a Redacted event already names
    for position, value in values:
        data = bytes(value[HASH_SIZE:])
        try:
            digest, state = examine_record(data)
            recorded = decode_record(data)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            raise RedactionRefusedError(
                f"the record at position {position} does not decode: run `chatledger verify`"
            ) from None
        if digest != bytes(value[:HASH_SIZE]) or state not in (CONTENT_PLAIN, CONTENT_KEPT,
                                                                CONTENT_REDACTED):
            state = "damaged"
        records.append(recorded)
        states.append(state)
        if isinstance(recorded.event, Redacted):
            named.add(recorded.event.version)
    if version is None:
        targets = [index for index, state in enumerate(states) if state == CONTENT_KEPT]
    else:
        if version < 1 or version > len(records):
            raise RedactionRefusedError(
                f"session {session_id} has no version {version} (it has {len(records)})"
            )
        targets = [version - 1]
        _check_redactable(records[version - 1], states[version - 1], named)
    rewrites: list[tuple[int, bytes]] = []
    events: list[Redacted] = []
    for index in targets:
        position, value = values[index]
        recorded = records[index]
        rewrites.append((position, without_content(bytes(value))))
        if recorded.version not in named:
            events.append(Redacted(
                version=recorded.version, position=position, event_type=tag_of(recorded.event),
                commitment=decode_sealed(bytes(value[HASH_SIZE:])).commitment,
                reason=reason, redacted_by=redacted_by,
            ))
    rewritten = dict(rewrites)
    info = SessionInfo(session_id=session_id)
    for (position, _), recorded in zip(values, records, strict=True):
        if position in rewritten:
            recorded = decode_record(rewritten[position][HASH_SIZE:])
        info = evolve(info, recorded)
    return RedactionPlan(rewrites=rewrites, events=events, info=info)


def _check_redactable(recorded: Recorded, state: str, named: set[int]) -> None:
    """Refuse to redact a record that cannot be (see `plan_redaction`)."""
    where = f"version {recorded.version} ({tag_of(recorded.event)}, position {recorded.position})"
    if state == "damaged":
        raise RedactionRefusedError(
            f"{where} fails its own check (altered?): run `chatledger verify`; a damaged "
            "record is not redacted, which would hide the damage"
        )
    if state == CONTENT_REDACTED:
        raise RedactionRefusedError(f"{where} is already redacted")
    if state == CONTENT_PLAIN:
        if has_content(recorded.event):
            raise RedactionRefusedError(
                f"{where} was written before the redaction-ready format (chatledger's record "
                "format 1): its hash covers its content, so removing the content would break "
                "the hash chains; it cannot be redacted"
            )
        raise RedactionRefusedError(f"{where} has no content to redact")

