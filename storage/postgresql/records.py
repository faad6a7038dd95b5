"""Rows of the PostgreSQL ledger as chatledger values: records, sealed records, index entries.

A sealed row holds the stored record (the LMDB record format, both hash links inside) and
decodes in one call. A row not sealed yet holds only the encoded event: it becomes a
`Recorded` at position 0 with genesis links, which the sealer replaces within its lag.
This module does no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from ...events.codec import decode_event, decode_record
from ...events.model import Recorded
from ...events.projections import SessionInfo
from ..hashing import GENESIS
from ..leases import Lease
from ..records import seal_of_stored_event, stored_record

UNSEALED_POSITION = 0
"""The position of a record the sealer has not placed in the global order yet."""

_info_encoder = msgspec.msgpack.Encoder()
_info_decoder = msgspec.msgpack.Decoder(SessionInfo)


def encode_info(info: SessionInfo) -> bytes:
    """A `sessions.info` value."""
    return _info_encoder.encode(info)


def lease_columns(records: Sequence[Lease]) -> list[list[Any]]:
    """Lease records as the `leases` table's columns (session, epoch, host, pid, started_at,
    token, expires_at), one array each; a released record's holder columns are NULL."""
    owners = [record.owner for record in records]
    return [
        [record.session_id for record in records],
        [record.epoch for record in records],
        [owner.host if owner is not None else None for owner in owners],
        [owner.pid if owner is not None else None for owner in owners],
        [owner.started_at if owner is not None else None for owner in owners],
        [owner.token if owner is not None else None for owner in owners],
        [record.expires_at for record in records],
    ]


def decode_info(data: bytes, last_position: int | None) -> SessionInfo:
    """A session's info from its `sessions.info` value and its last record's position."""
    info = _info_decoder.decode(data)
    return msgspec.structs.replace(info, last_position=last_position or UNSEALED_POSITION)


def unsealed_record(session_id: str, version: int, recorded_at: datetime, schema_version: int,
                    event: bytes) -> Recorded:
    """A record before its seal: position 0, genesis links."""
    return Recorded(
        position=UNSEALED_POSITION,
        session_id=session_id,
        version=version,
        recorded_at=recorded_at,
        schema_version=schema_version,
        prev_session_hash=GENESIS,
        prev_log_hash=GENESIS,
        event=decode_event(event, schema_version),
    )


def row_record(session_id: str, version: int, recorded_at: datetime, schema_version: int,
               event: bytes | None, record: bytes | None) -> Recorded:
    """The record of an `events` row, sealed or not."""
    if record is not None:
        return decode_record(record)
    assert event is not None, "an events row holds its event until it is sealed"
    return unsealed_record(session_id, version, recorded_at, schema_version, event)


def seal_record(position: int, session_id: str, version: int, recorded_at: datetime,
                schema_version: int, prev_session_hash: bytes, prev_log_hash: bytes,
                event: bytes) -> tuple[bytes, bytes]:
    """The stored record of a row placed at `position` (LMDB's format, its content sealed
    with a fresh salt), and its hash."""
    return stored_record(position, session_id, version, recorded_at, prev_session_hash,
                         prev_log_hash, event, seal_of_stored_event(event, schema_version),
                         schema_version)


def with_seal(recorded: Recorded, position: int, prev_session_hash: bytes,
              prev_log_hash: bytes) -> Recorded:
    """`recorded` as its seal placed it."""
    return msgspec.structs.replace(recorded, position=position,
                                   prev_session_hash=prev_session_hash,
                                   prev_log_hash=prev_log_hash)

