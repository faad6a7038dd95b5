"""The writer's binary array parameters (storage/postgresql/arrays.py) read back by a real
server as the values they were made of: every element type, NULL elements, non-ASCII text,
time zones, and None for an empty column."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

try:
    import psycopg
except ImportError:  # pragma: no cover - the extra is not installed
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("psycopg is not installed: pip install -e '.[postgresql]'",
                allow_module_level=True)

from chatledger.storage.postgresql.arrays import (
    bytea_array,
    float8_array,
    int4_array,
    int8_array,
    text_array,
    timestamptz_array,
)


def read_back(url: str, cast: str, parameter: object) -> object:
    """What the server makes of the parameter as a `cast` array."""
    with psycopg.connect(url) as connection:
        row = connection.execute(f"SELECT %b::{cast}", [parameter]).fetchone()
    assert row is not None
    return row[0]


def test_each_array_type_reads_back_as_its_values(postgres_url: str) -> None:
    when = [datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=timezone.utc),
            datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5)))]
    cases: list[tuple[str, object, list[Any]]] = [
        ("int4[]", int4_array([-(2**31), 0, 2**31 - 1]), [-(2**31), 0, 2**31 - 1]),
        ("int8[]", int8_array([-(2**63), 7, 2**63 - 1]), [-(2**63), 7, 2**63 - 1]),
        ("float8[]", float8_array([0.5, -1e300, 3.0]), [0.5, -1e300, 3.0]),
        ("text[]", text_array(["alpha", "", "grüße ✓"]), ["alpha", "", "grüße ✓"]),
        ("bytea[]", bytea_array([b"\x00\xff", b"", bytes(range(256))]),
         [b"\x00\xff", b"", bytes(range(256))]),
        ("timestamptz[]", timestamptz_array(when), when),
    ]
    for cast, parameter, expected in cases:
        assert read_back(postgres_url, cast, parameter) == expected, cast


def test_null_elements_read_back_as_none(postgres_url: str) -> None:
    assert read_back(postgres_url, "int8[]", int8_array([1, None, 3])) == [1, None, 3]
    assert read_back(postgres_url, "float8[]", float8_array([None, 2.5])) == [None, 2.5]
    assert read_back(postgres_url, "text[]", text_array([None, "x"])) == [None, "x"]
    assert read_back(postgres_url, "bytea[]", bytea_array([b"a", None])) == [b"a", None]


def test_an_empty_column_is_null_and_a_naive_time_is_refused() -> None:
    assert int8_array([]) is None and text_array([]) is None and timestamptz_array([]) is None
    with pytest.raises(ValueError, match="time zone"):
        timestamptz_array([datetime(2026, 12, 1)])
