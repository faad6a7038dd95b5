"""What of an event is content (what a redaction removes) and how the event reads without it.

Content is what a person or the agent said or saw: user messages and canvas state, answers
with their tool calls and text blocks, canvas modifications, failure messages and what the
agent had streamed, tool-approval inputs, agent transcript entries and titles (a title can
be taken from the first message). Everything else stays clear for the hash chain, the
indexes and the folds: the envelope (position, session id, version, time, schema, links),
the event's type and its other fields (turn numbers, modes, study, owner, argv, exit codes,
durations, costs and token usage, agent session ids).

`redacted_form(event)` is the event with each content field set to a placeholder
(`REDACTED_TEXT` for text that was not empty, empty tuples, None): a valid event of the same
type, so a redacted record still decodes and folds. Events without content fields are never
split. Pure; no I/O.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .model import (
    CanvasModified,
    Event,
    MessageSent,
    PermissionDecided,
    PermissionRequested,
    ResponseReceived,
    RunFailed,
    SessionTitled,
    TranscriptEntriesAppended,
    UnknownEvent,
)

REDACTED_TEXT = "[redacted]"
"""What a redacted text field reads."""

CONTENT_FIELDS: dict[type[Event], tuple[str, ...]] = {
    MessageSent: ("text", "canvas_state"),
    ResponseReceived: ("text", "tool_calls", "text_blocks", "permission_denials"),
    CanvasModified: ("modification",),
    RunFailed: ("message", "stderr_tail", "partial_text"),
    PermissionRequested: ("input",),
    PermissionDecided: ("message",),
    TranscriptEntriesAppended: ("entries", "summary"),
    SessionTitled: ("title",),
}
"""Event type -> the fields that are content; a type not listed has none."""


def has_content(event: Event | UnknownEvent) -> bool:
    """Whether the event's type has content fields (its record is split and redactable)."""
    return type(event) in CONTENT_FIELDS


_encoder = msgspec.msgpack.Encoder()


def encode_redacted_form(event: Event) -> bytes:
    """The redacted form's MessagePack bytes (of an event already checked by the codec)."""
    return _encoder.encode(redacted_form(event))


def redacted_form(event: Event) -> Event:
    """The event with every content field replaced by its placeholder (see the module doc)."""
    constant, texts = _PLACEHOLDERS[type(event)]
    if not texts:
        return _replace(event, **constant)
    return _replace(event, **constant,
                    **{name: REDACTED_TEXT if getattr(event, name) else "" for name in texts})


def _placeholders(event_type: type[Event]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A type's content fields split: those with a fixed placeholder (and it), text ones."""
    types = {field.name: field.type for field in msgspec.structs.fields(event_type)}
    texts = tuple(name for name in CONTENT_FIELDS[event_type] if types[name] is str)
    constant = {name: () if str(types[name]).startswith("tuple") else None
                for name in CONTENT_FIELDS[event_type] if name not in texts}
    return constant, texts


_replace = msgspec.structs.replace
_PLACEHOLDERS = {event_type: _placeholders(event_type) for event_type in CONTENT_FIELDS}
