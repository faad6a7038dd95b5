"""MessagePack codec for events and stored records, with upcasters for old event shapes.

A record is stored as a MessagePack array (see `Recorded`) whose last element is the event,
a tagged map. Records written by this release decode in one msgspec call; records from an
older schema go through the upcasters (raw-dict edits, run in a loop up to the current
version), and events whose tag this release does not know become `UnknownEvent`s that keep
their bytes. This module does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from ..errors import InvalidEventError
from .model import (
    FAILURE_REASONS,
    TAGS,
    AnyEvent,
    Envelope,
    Event,
    Recorded,
    RunFailed,
    UnknownEvent,
    is_failure_reason,
)

SCHEMA_VERSION = 2
"""The event schema this release writes. Bump it with an upcaster when a shape breaks."""

Upcaster = Callable[[str, dict[str, Any]], tuple[str, dict[str, Any]]]
"""Edits one raw event (tag, fields) from schema N to N+1."""

UPCASTERS: dict[int, Upcaster] = {}
"""from-schema-version -> upcaster to the next version."""


def upcaster(from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function that lifts raw events from `from_version` to the next version."""

    def register(function: Upcaster) -> Upcaster:
        if from_version in UPCASTERS:
            raise ValueError(f"an upcaster from schema {from_version} is already registered")
        UPCASTERS[from_version] = function
        return function

    return register


@upcaster(from_version=1)
def upcast_v1_v2(tag: str, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Schema 1 named mode changes old/new and kept run duration in ms and cost as `cost`."""
    if tag == "mode_switched":
        fields["from_mode"] = fields.pop("old", fields.get("from_mode", "user"))
        fields["to_mode"] = fields.pop("new", fields.get("to_mode", "user"))
    elif tag == "response_received":
        if "duration_ms" in fields:
            fields["duration"] = fields.pop("duration_ms") / 1000.0
        if "cost" in fields:
            fields["cost_usd"] = fields.pop("cost")
        if "session" in fields:
            fields["agent_session_id"] = fields.pop("session")
    return tag, fields


StoredEnvelope = Envelope[msgspec.Raw]
"""A record's stored shape with the event left encoded: used to write and to check."""

SEALED_RECORD_MARKER = 0x99
"""The first byte of a record of the redaction-ready format: a MessagePack array of 9."""
SEAL_TRAILER = 40
"""The seal's last bytes: the commitment (32), then the extents (8)."""
SALT_KEY = "_salt"
"""The key under which an event with content carries its salt, inside its own map (decoding
ignores it: no event has such a field), so event and salt go in one redaction."""


class SealedEnvelope(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A record of the redaction-ready format, its parts left encoded (to write and to check).

    The envelope's seven fields, then the event (its map holding 16 random bytes under
    SALT_KEY; nil once redacted), then the seal, one bin: the event's redacted form
    (`events.content.redacted_form`, encoded), the commitment (BLAKE2b-256 of the event's
    bytes, salt included) and the extents (the event's offset in the record and the seal
    element's length, 4 bytes each, big-endian, neither changed by a redaction). The chain
    hash covers every byte but the event's (`storage.hashing`), so removing it keeps every
    link. `Recorded` reads the first eight fields of such a record as it reads an older one
    (msgspec skips the seal, one bin, at almost no cost).
    """

    position: int
    session_id: str
    version: int
    recorded_at: datetime
    schema_version: int
    prev_session_hash: bytes
    prev_log_hash: bytes
    event: msgspec.Raw
    seal: bytes

    @property
    def redacted(self) -> bytes:
        """The encoded redacted form of the event."""
        return self.seal[:-SEAL_TRAILER]

    @property
    def commitment(self) -> bytes:
        """The commitment to the event's bytes."""
        return self.seal[-SEAL_TRAILER:-8]


def with_salt(event: bytes, salt: bytes) -> bytes:
    """An encoded event (a MessagePack map) with `salt` added under SALT_KEY."""
    first = event[0]
    if 0x80 <= first <= 0x8F:
        count, body = first & 0x0F, event[1:]
    elif first == 0xDE:
        count, body = int.from_bytes(event[1:3], "big"), event[3:]
    elif first == 0xDF:
        count, body = int.from_bytes(event[1:5], "big"), event[5:]
    else:
        raise ValueError("an encoded event is a MessagePack map")
    count += 1
    header = (bytes([0x80 | count]) if count < 16 else
              b"\xde" + count.to_bytes(2, "big") if count < 0x10000 else
              b"\xdf" + count.to_bytes(4, "big"))
    return header + body + _SALT_KEY + _event_encoder.encode(salt)


_event_encoder = msgspec.msgpack.Encoder()
_event_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(AnyEvent)
_record_decoder = msgspec.msgpack.Decoder(Recorded)
_envelope_decoder = msgspec.msgpack.Decoder(StoredEnvelope)
_raw_map_decoder: msgspec.msgpack.Decoder[dict[str, Any]] = msgspec.msgpack.Decoder(dict[str, Any])
_sealed_decoder = msgspec.msgpack.Decoder(SealedEnvelope)
_SALT_KEY = msgspec.msgpack.encode(SALT_KEY)
_NIL = b"\xc0"


ENCODE_ERRORS = (
    TypeError, ValueError, OverflowError, RecursionError, UnicodeError, msgspec.EncodeError
)
"""What msgspec raises for a value it cannot encode (wrong type, lone surrogate, huge int,
a cycle)."""

_SURROGATE = re.compile("[\ud800-\udfff]")
MIN_STORABLE_INT = -(2**63)
MAX_STORABLE_INT = 2**64 - 1


def encode_event(event: Event | UnknownEvent) -> bytes:
    """Encode one event as a tagged MessagePack map (an UnknownEvent as its original bytes).

    The bytes are decoded again before they are handed out, so the log never stores an event
    it cannot read back: a field of the wrong type (msgspec does not check types when a
    Struct is built), a lone surrogate or an integer MessagePack cannot hold raises
    InvalidEventError, and so does a `RunFailed` whose reason is not one of FAILURE_REASONS
    (older records holding any reason still decode).
    """
    if isinstance(event, UnknownEvent):
        return event.raw
    if not isinstance(event, Event) or type(event) not in TAGS.values():
        raise TypeError(f"not a chatledger event: {event!r}")
    name = type(event).__name__
    if isinstance(event, RunFailed) and not is_failure_reason(event.reason):
        raise InvalidEventError(
            f"RunFailed cannot be stored: reason {event.reason!r} is not one of "
            f"{', '.join(FAILURE_REASONS)}"
        )
    try:
        data = _event_encoder.encode(event)
    except ENCODE_ERRORS as error:
        raise InvalidEventError(f"{name} cannot be stored: {error}") from None
    try:
        _event_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise InvalidEventError(f"{name} cannot be stored: {error}") from None
    return data


def storable(value: Any, depth: int = 0) -> Any:
    """A JSON-like value the codec can always store, for what an agent printed: integers
    outside MessagePack's range become strings, lone surrogates U+FFFD, other keys strings,
    and anything else that is not plain data its repr. Plain data comes back unchanged."""
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if MIN_STORABLE_INT <= value <= MAX_STORABLE_INT else str(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _SURROGATE.sub("\ufffd", value)
        return value
    if depth > 200:
        return repr(value)[:1000]
    if isinstance(value, dict):
        return {
            storable(key if isinstance(key, str) else str(key), depth + 1):
            storable(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [storable(item, depth + 1) for item in value]
    return storable(repr(value), depth + 1)


def decode_event(data: bytes, schema_version: int = SCHEMA_VERSION) -> Event | UnknownEvent:
    """Decode one stored event, upcasting old shapes and keeping unknown tags verbatim."""
    if schema_version == SCHEMA_VERSION:
        try:
            return _event_decoder.decode(data)
        except msgspec.ValidationError:
            pass  # an unknown tag, or a shape from a newer release: take the slow path
    fields = _raw_map_decoder.decode(data)
    tag = fields.pop("type", None)
    if not isinstance(tag, str):
        raise msgspec.DecodeError("stored event has no string 'type' tag")
    version = schema_version
    while version < SCHEMA_VERSION:
        tag, fields = UPCASTERS[version](tag, fields)
        version += 1
    event_class = TAGS.get(tag)
    if event_class is None:
        return UnknownEvent(type=tag, fields=fields, raw=bytes(data))
    try:
        return msgspec.convert(fields, event_class)
    except msgspec.ValidationError:
        # A newer writer changed a known event beyond what we can read: keep it verbatim.
        return UnknownEvent(type=tag, fields=fields, raw=bytes(data))


def encode_record(envelope: Envelope[Any] | SealedEnvelope) -> bytes:
    """Encode a record for storage (its event as a struct or as `msgspec.Raw` bytes; of the
    redaction-ready format, its parts encoded)."""
    return _event_encoder.encode(envelope)


def decode_envelope(data: bytes | memoryview) -> StoredEnvelope:
    """Decode a stored record's envelope, leaving its event as raw MessagePack (of a
    redacted record: nil)."""
    return _envelope_decoder.decode(data)


def is_sealed(data: bytes | memoryview) -> bool:
    """Whether a stored record has the redaction-ready format (see `SealedEnvelope`)."""
    return len(data) > 0 and data[0] == SEALED_RECORD_MARKER


def decode_sealed(data: bytes | memoryview) -> SealedEnvelope:
    """Decode a record of the redaction-ready format into its encoded parts."""
    return _sealed_decoder.decode(data)


def decode_record(data: bytes | memoryview) -> Recorded:
    """Decode a stored record into a `Recorded`, on the fast path whenever possible."""
    try:
        recorded = _record_decoder.decode(data)
        if recorded.schema_version == SCHEMA_VERSION:
            return recorded
    except msgspec.ValidationError:
        pass  # an unknown tag or a newer shape
    envelope = _envelope_decoder.decode(data)
    event_bytes = bytes(envelope.event)
    if event_bytes == _NIL and is_sealed(data):  # redacted: it reads as its redacted form
        event_bytes = _sealed_decoder.decode(data).redacted
    event = decode_event(event_bytes, envelope.schema_version)
    return Recorded(
        position=envelope.position,
        session_id=envelope.session_id,
        version=envelope.version,
        recorded_at=envelope.recorded_at,
        schema_version=envelope.schema_version,
        prev_session_hash=envelope.prev_session_hash,
        prev_log_hash=envelope.prev_log_hash,
        event=event,
    )


def event_to_builtins(event: Event | UnknownEvent) -> dict[str, Any]:
    """The event as a JSON-ready dict with its `type` tag (for exports and `--json`)."""
    if isinstance(event, UnknownEvent):
        return {"type": event.type, **event.fields}
    return msgspec.to_builtins(event)


def event_from_builtins(data: dict[str, Any]) -> Event | UnknownEvent:
    """Rebuild an event from `event_to_builtins` output (unknown tags kept verbatim)."""
    fields = dict(data)
    tag = fields.get("type")
    event_class = TAGS.get(tag) if isinstance(tag, str) else None
    if event_class is None:
        fields.pop("type", None)
        raw = _event_encoder.encode(data)
        return UnknownEvent(type=str(tag), fields=fields, raw=raw)
    return msgspec.convert(data, AnyEvent)
