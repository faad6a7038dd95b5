"""Records as JSON: every field of every event, defaults included, for `--json` and exports.

Stored events leave out fields at their default (MessagePack stays small); a reader should
not have to know the defaults, so here every field is written. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from ..events.model import Event, Recorded, UnknownEvent
from ..storage.hashing import HASH_SIZE


def _every_field(value: Any) -> Any:
    """A Struct (recursively) as builtins with every field, its tag first; other values as
    msgspec writes them."""
    if isinstance(value, msgspec.Struct):
        data: dict[str, Any] = {}
        config = value.__struct_config__
        if config.tag_field is not None:
            data[config.tag_field] = config.tag
        for field in msgspec.structs.fields(value):
            data[field.encode_name] = _every_field(getattr(value, field.name))
        return data
    if isinstance(value, (list, tuple)):
        return [_every_field(item) for item in value]
    if isinstance(value, dict):
        return {key: _every_field(item) for key, item in value.items()}
    return msgspec.to_builtins(value)


def event_json(event: Event | UnknownEvent) -> dict[str, Any]:
    """The event as a JSON-ready dict with its `type` tag and every field (defaults too)."""
    if isinstance(event, UnknownEvent):
        return {"type": event.type, **msgspec.to_builtins(event.fields)}
    result: dict[str, Any] = _every_field(event)
    return result


def record_to_json(recorded: Recorded) -> dict[str, Any]:
    """A record as a JSON-ready dict (for `--json` output and export lines)."""
    return {
        "position": recorded.position,
        "session_id": recorded.session_id,
        "version": recorded.version,
        "recorded_at": recorded.recorded_at.isoformat(),
        "schema_version": recorded.schema_version,
        "event": event_json(recorded.event),
    }


def record_to_line(recorded: Recorded, stored: bytes) -> dict[str, Any]:
    """One export line: the readable record plus its hash links, stored bytes and hash."""
    return {
        **record_to_json(recorded),
        "prev_session_hash": recorded.prev_session_hash.hex(),
        "prev_log_hash": recorded.prev_log_hash.hex(),
        "hash": stored[:HASH_SIZE].hex(),
        "record": base64.b64encode(stored[HASH_SIZE:]).decode("ascii"),
    }
