"""Array parameters in PostgreSQL's binary array format, encoded in one pass.

A writer's batch goes to the server as some twenty one-dimensional arrays. psycopg's generic
list dumper inspects every list (element types, dimensions, nulls) in Python before encoding
it; measured, that was the largest part of a batch's client CPU. The writer knows each
column's type, so it encodes the arrays itself here (`struct`, one `join`) and psycopg passes
the bytes through. An empty column is None (the server functions read NULL as empty). This
module does no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

_HEADER = struct.Struct("!iiIii")  # dimensions, has nulls, element type, length, lower bound
_LENGTH = struct.Struct("!i")
_NULL = _LENGTH.pack(-1)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


class BinaryArray(bytes):
    """A one-dimensional array parameter already in PostgreSQL's binary format."""

    oid = 0
    """The array type's oid."""


class Int4Array(BinaryArray):
    """An int4[] parameter."""

    oid = 1007


class Int8Array(BinaryArray):
    """An int8[] parameter."""

    oid = 1016


class Float8Array(BinaryArray):
    """A float8[] parameter."""

    oid = 1022


class TextArray(BinaryArray):
    """A text[] parameter."""

    oid = 1009


class ByteaArray(BinaryArray):
    """A bytea[] parameter."""

    oid = 1001


class TimestamptzArray(BinaryArray):
    """A timestamptz[] parameter."""

    oid = 1185


_ELEMENT_OIDS: dict[type[BinaryArray], int] = {Int4Array: 23, Int8Array: 20, Float8Array: 701, TextArray: 25,
                 ByteaArray: 17, TimestamptzArray: 1184}


def _fixed(kind: type[BinaryArray], code: str, size: int
           ) -> Callable[[Sequence[object]], BinaryArray | None]:
    element = struct.Struct(f"!i{code}")

    def encode(values: Sequence[object]) -> BinaryArray | None:
        if not values:
            return None
        if None not in values:
            body = struct.pack("!" + ("i" + code) * len(values),
                               *[part for value in values for part in (size, value)])
            return kind(_HEADER.pack(1, 0, _ELEMENT_OIDS[kind], len(values), 1) + body)
        return kind(_HEADER.pack(1, 1, _ELEMENT_OIDS[kind], len(values), 1) + b"".join(
            _NULL if value is None else element.pack(size, value) for value in values))

    return encode


def _variable(kind: type[BinaryArray], to_bytes: Callable[[object], bytes]
              ) -> Callable[[Sequence[object]], BinaryArray | None]:
    def encode(values: Sequence[object]) -> BinaryArray | None:
        if not values:
            return None
        parts = [_HEADER.pack(1, int(None in values), _ELEMENT_OIDS[kind], len(values), 1)]
        for value in values:
            if value is None:
                parts.append(_NULL)
            else:
                data = to_bytes(value)
                parts.append(_LENGTH.pack(len(data)))
                parts.append(data)
        return kind(b"".join(parts))

    return encode


def _microseconds(value: object) -> int:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"a timestamptz parameter needs a time zone: {value!r}")
    return (value - _PG_EPOCH) // _MICROSECOND


int4_array = _fixed(Int4Array, "i", 4)
"""int4[] of a list of ints (None elements are NULL); None for an empty list."""
int8_array = _fixed(Int8Array, "q", 8)
"""int8[] of a list of ints (None elements are NULL); None for an empty list."""
float8_array = _fixed(Float8Array, "d", 8)
"""float8[] of a list of floats (None elements are NULL); None for an empty list."""
text_array = _variable(TextArray, lambda value: str(value).encode())
"""text[] of a list of strings (None elements are NULL); None for an empty list."""
bytea_array = _variable(ByteaArray, lambda value: value)  # type: ignore[arg-type, return-value]
"""bytea[] of a list of bytes (None elements are NULL); None for an empty list."""


_microsecond_array = _fixed(TimestamptzArray, "q", 8)  # 8-byte microseconds since 2000


def timestamptz_array(values: Sequence[object]) -> BinaryArray | None:
    """timestamptz[] of a list of aware datetimes; None for an empty list."""
    return _microsecond_array([None if value is None else _microseconds(value)
                               for value in values])


def _register() -> None:
    for kind in _ELEMENT_OIDS:
        dumper = type(f"{kind.__name__}Dumper", (Dumper,), {
            "format": Format.BINARY,
            "oid": kind.oid,
            "dump": lambda self, obj: obj,
        })
        psycopg.adapters.register_dumper(kind, dumper)


_register()
