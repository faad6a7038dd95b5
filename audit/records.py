"""Records as JSON: every field of every event, defaults included, for `--json` and exports.

Stored events leave out fields at their default (MessagePack stays small); a reader should
not have to know the defaults, so here every field is written. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import typing
from typing import Any

import msgspec

from ..events.codec import is_sealed
from ..events.model import Event, Recorded, UnknownEvent
from ..storage.hashing import CONTENT_REDACTED, HASH_SIZE, examine_record

_REQUIRED = object()
"""Stands for a field without a default in a template (the event always has it)."""


class _Template(msgspec.Struct, frozen=True):
    """A struct class's every field in order, defaults filled, and its nested struct lists."""

    fields: dict[str, Any]
    nested: dict[str, type]
    mutable: tuple[str, ...]
    """Fields whose default is a list or dict: copied, so no two outputs share one."""


_templates: dict[type, _Template] = {}


def _template(struct_type: type) -> _Template:
    """The (cached) template of a struct class."""
    template = _templates.get(struct_type)
    if template is not None:
        return template
    fields: dict[str, Any] = {}
    nested: dict[str, type] = {}
    config = struct_type.__struct_config__  # type: ignore[attr-defined]
    if config.tag_field is not None:
        fields[config.tag_field] = config.tag
    for field in msgspec.structs.fields(struct_type):
        if field.default is not msgspec.NODEFAULT:
            fields[field.encode_name] = msgspec.to_builtins(field.default)
        elif field.default_factory is not msgspec.NODEFAULT:
            fields[field.encode_name] = msgspec.to_builtins(field.default_factory())
        else:
            fields[field.encode_name] = _REQUIRED
        if isinstance(fields[field.encode_name], tuple):
            fields[field.encode_name] = list(fields[field.encode_name])
        arguments = typing.get_args(field.type)
        if typing.get_origin(field.type) in (tuple, list) and arguments and isinstance(
            arguments[0], type
        ) and issubclass(arguments[0], msgspec.Struct):
            nested[field.encode_name] = arguments[0]
    mutable = tuple(name for name, value in fields.items() if isinstance(value, (list, dict)))
    template = _templates[struct_type] = _Template(fields=fields, nested=nested,
                                                   mutable=mutable)
    return template


def _every_field(value: msgspec.Struct) -> dict[str, Any]:
    """A struct as builtins with every field (defaults too, its tag first), nested lists of
    structs likewise: msgspec's own output laid over the class's template."""
    template = _template(type(value))
    data = dict(template.fields)
    data.update(msgspec.to_builtins(value))
    for name in template.mutable:
        if data[name] is template.fields[name]:
            data[name] = type(data[name])()
    for name, item_type in template.nested.items():
        items = data.get(name)
        if items:
            item_fields = _template(item_type).fields
            data[name] = [{**item_fields, **item} for item in items]
    return data


def event_json(event: Event | UnknownEvent) -> dict[str, Any]:
    """The event as a JSON-ready dict with its `type` tag and every field (defaults too)."""
    if isinstance(event, UnknownEvent):
        return {"type": event.type, **msgspec.to_builtins(event.fields)}
    return _every_field(event)


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
    """One export line: the readable record plus its hash links, stored bytes and hash, and
    `"redacted": true` when its content was redacted (its event then reads as the event's
    redacted form)."""
    line = {
        **record_to_json(recorded),
        "prev_session_hash": recorded.prev_session_hash.hex(),
        "prev_log_hash": recorded.prev_log_hash.hex(),
        "hash": stored[:HASH_SIZE].hex(),
        "record": base64.b64encode(stored[HASH_SIZE:]).decode("ascii"),
    }
    if is_redacted(stored[HASH_SIZE:]):
        line["redacted"] = True
    return line


def is_redacted(record: bytes) -> bool:
    """Whether a stored record's content was redacted (its event, salt in it, removed)."""
    return is_sealed(record) and examine_record(record)[1] == CONTENT_REDACTED
