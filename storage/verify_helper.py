"""Verification of a range of sessions, the unit of work of a parallel `verify`.

`check_sessions` walks the stream index over a range of session ids and, for each session in
version order, reads its records, recomputes their hashes, decodes them, checks both chain
links against the stored hashes, folds them and compares the result with the session index.
A parallel verify runs it on two halves of the session ids, one of them in a helper process
(`python -m chatledger.storage.verify_helper PATH START_HEX`, which prints one MessagePack
`RangeReport`). It only reads, in short transactions, and only says whether its range is
intact: the caller decides, and explains problems with the sequential check.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from ..events.codec import SCHEMA_VERSION, decode_record
from ..events.model import Recorded
from ..events.projections import ProjectionError, SessionInfo, evolve
from .hashing import GENESIS, HASH_SIZE

if TYPE_CHECKING:
    from .lmdb_log import EventLog

READ_CHUNK = 4096

_record_decoder = msgspec.msgpack.Decoder(Recorded)
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, ValueError)


class RangeReport(msgspec.Struct, kw_only=True):
    """Whether a range of sessions is intact, and how many records and sessions it holds."""

    ok: bool = True
    records: int = 0
    sessions: int = 0


class _RangeBroken(Exception):
    """Something in the range is wrong; the sequential check will say what."""


def check_sessions(
    log: EventLog,
    start: bytes,
    stop: bytes | None,
    progress: Callable[[int], None] | None = None,
) -> RangeReport:
    """Check every session whose id, as UTF-8 bytes, is >= `start` and < `stop` (None: no
    upper bound); see the module docstring. Blocks the calling thread while it reads."""
    from .lmdb_log import IndexEntry, decode_index_entry, encode_index_entry

    report = RangeReport()
    store = log.store
    log_db, streams_db, sessions_db = store.log_db, store.streams_db, store.sessions_db
    blake2b = hashlib.blake2b
    decode_current = _record_decoder.decode
    resume = start
    session_bytes: bytes | None = None
    session_id = ""
    info = SessionInfo(session_id="")
    last_hash = GENESIS
    last_position = -1

    def finish_session(txn: object) -> None:
        stored = txn.get(session_bytes, db=sessions_db)  # type: ignore[attr-defined]
        if stored is None:
            raise _RangeBroken
        expected = IndexEntry(info=info, last_hash=last_hash)
        if stored != encode_index_entry(expected) and (
            decode_index_entry(stored) != expected
        ):
            raise _RangeBroken
        report.sessions += 1

    try:
        while True:
            read = 0
            done = True
            with store.shared.transaction() as txn:
                get = txn.get
                cursor = txn.cursor(db=streams_db)
                if cursor.set_range(resume) if resume else cursor.first():
                    for key, raw_position in cursor:
                        if key == resume and read == 0 and resume != start:
                            continue  # the last key of the previous chunk
                        if stop is not None and key >= stop:
                            break
                        if len(key) < 10 or key[-9] != 0:
                            raise _RangeBroken
                        if key[:-9] != session_bytes:
                            if session_bytes is not None:
                                finish_session(txn)
                            session_bytes = key[:-9]
                            session_id = session_bytes.decode()
                            info = SessionInfo(session_id=session_id)
                            last_hash = GENESIS
                            last_position = -1
                        data = get(raw_position, db=log_db)  # the value is the log key
                        position = int.from_bytes(raw_position, "big")
                        if data is None:
                            raise _RangeBroken
                        stored_hash = data[:HASH_SIZE]
                        body = data[HASH_SIZE:]
                        if blake2b(body, digest_size=HASH_SIZE).digest() != stored_hash:
                            raise _RangeBroken
                        try:
                            recorded = decode_current(body)
                            if recorded.schema_version != SCHEMA_VERSION:
                                raise ValueError("an older schema")
                        except _DECODE_ERRORS:
                            recorded = decode_record(body)  # older schema, newer writer
                        if (
                            recorded.position != position
                            or recorded.session_id != session_id
                            or recorded.version != int.from_bytes(key[-8:], "big")
                            or recorded.prev_session_hash != last_hash
                        ):
                            raise _RangeBroken
                        if position == last_position + 1:
                            previous_hash = last_hash  # this session's previous record
                        elif position == 1:
                            previous_hash = GENESIS
                        else:
                            previous = get((position - 1).to_bytes(8, "big"), db=log_db)
                            if previous is None:
                                raise _RangeBroken
                            previous_hash = previous[:HASH_SIZE]
                        if recorded.prev_log_hash != previous_hash:
                            raise _RangeBroken
                        info = evolve(info, recorded)
                        last_hash = stored_hash
                        last_position = position
                        resume = key
                        read += 1
                        if read >= READ_CHUNK:
                            done = False
                            break
                if done and session_bytes is not None:
                    finish_session(txn)
            report.records += read
            if progress is not None and read:
                progress(read)
            if done:
                return report
    except (_RangeBroken, ProjectionError, UnicodeDecodeError, *_DECODE_ERRORS):
        report.ok = False
        return report


def main(argv: list[str]) -> int:
    """Check the sessions from bytes.fromhex(argv[1]) on of the ledger at argv[0] and write
    the report to stdout; exit 1 on any error (the caller then verifies sequentially)."""
    from .lmdb_log import EventLog

    try:
        with EventLog(argv[0], readonly=True) as log:
            report = check_sessions(log, bytes.fromhex(argv[1]), None)
    except Exception as error:  # noqa: BLE001 - any failure means: verify sequentially
        print(f"verify helper: {error}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(msgspec.msgpack.encode(report))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
