"""JSONL export and import: one record per line, readable, and checked on the way back in.

Each line carries the record as readers want it (position, session, version, time, event as
JSON) and, in `record`, the exact stored bytes (base64) with their `hash`. Import recomputes
every hash, follows each session's hash chain, checks that the readable part says what the
stored bytes say, refuses a session whose history differs from what the ledger holds, skips
events already present, and appends the rest to every session in one transaction.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import msgspec

from ..errors import ChatledgerError, CorruptLedgerError
from ..events.codec import decode_record, event_to_builtins
from ..events.model import Recorded
from ..storage import GENESIS, EventLog, SessionAppend, record_hash
from ..storage.hashing import HASH_SIZE

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()


class ImportRejectedError(ChatledgerError):
    """An import file failed its checks; nothing was imported."""


class ImportReport(msgspec.Struct, kw_only=True):
    """What an import did: events appended and skipped (already present), sessions touched."""

    events_read: int = 0
    events_imported: int = 0
    events_already_present: int = 0
    sessions_imported: int = 0


def record_to_json(recorded: Recorded) -> dict[str, Any]:
    """A record as a JSON-ready dict (for `--json` output and export lines)."""
    return {
        "position": recorded.position,
        "session_id": recorded.session_id,
        "version": recorded.version,
        "recorded_at": recorded.recorded_at.isoformat(),
        "schema_version": recorded.schema_version,
        "event": event_to_builtins(recorded.event),
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


def iter_export(log: EventLog, session_ids: Iterable[str] | None = None) -> Iterator[bytes]:
    """Encoded JSONL lines (with newline) for the whole log, or for some sessions in log order."""
    wanted = set(session_ids) if session_ids is not None else None
    if wanted is not None:
        for session_id in sorted(wanted):
            log.require_info(session_id)
    for position, stored in log.read_raw():
        try:
            recorded = decode_record(stored[HASH_SIZE:])
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise CorruptLedgerError(
                f"the record at position {position} does not decode ({error}): the ledger is "
                "damaged; restore it from a copy (`chatledger verify` lists every bad place)"
            ) from None
        if wanted is not None and recorded.session_id not in wanted:
            continue
        yield _json_encoder.encode(record_to_line(recorded, bytes(stored))) + b"\n"


def export_jsonl(
    log: EventLog,
    out: IO[bytes],
    session_ids: Iterable[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the JSONL export to a binary stream; returns the number of records written."""
    count = 0
    for line in iter_export(log, session_ids):
        out.write(line)
        count += 1
        if progress is not None:
            progress(1)
    return count


def _parse_line(number: int, line: bytes) -> tuple[Recorded, bytes, dict[str, Any]]:
    """Decode and check one line on its own: hash, stored bytes, readable fields."""
    try:
        data = _json_decoder.decode(line)
        stored = base64.b64decode(data["record"], validate=True)
        claimed_hash = bytes.fromhex(data["hash"])
    except (msgspec.DecodeError, KeyError, TypeError, ValueError) as error:
        raise ImportRejectedError(f"line {number}: not a chatledger export line ({error})") from None
    except RecursionError:
        raise ImportRejectedError(f"line {number}: nested too deeply to be an export line") from None
    if record_hash(stored) != claimed_hash:
        raise ImportRejectedError(f"line {number}: the record does not match its hash")
    try:
        recorded = decode_record(stored)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
        raise ImportRejectedError(f"line {number}: the stored record does not decode ({error})") from None
    except RecursionError:
        raise ImportRejectedError(f"line {number}: the stored record is nested too deeply") from None
    try:
        event = _json_decoder.decode(_json_encoder.encode(event_to_builtins(recorded.event)))
    except RecursionError:
        raise ImportRejectedError(f"line {number}: the stored record is nested too deeply") from None
    readable = {
        "session_id": recorded.session_id,
        "version": recorded.version,
        "prev_session_hash": recorded.prev_session_hash.hex(),
        "event": event,
    }
    for key, value in readable.items():
        if data.get(key) != value:
            raise ImportRejectedError(
                f"line {number}: its {key!r} was edited (it differs from the stored record)"
            )
    return recorded, claimed_hash, data


def read_export(lines: Iterable[bytes]) -> dict[str, list[Recorded]]:
    """Parse and check an export: every line's hash, and each session's chain from version 1."""
    sessions: dict[str, list[Recorded]] = {}
    last_hash: dict[str, bytes] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        recorded, digest, _ = _parse_line(number, line)
        stream = sessions.setdefault(recorded.session_id, [])
        expected_version = len(stream) + 1
        if recorded.version != expected_version:
            raise ImportRejectedError(
                f"line {number}: session {recorded.session_id} jumps to version "
                f"{recorded.version} (expected {expected_version}); export whole sessions"
            )
        if recorded.prev_session_hash != last_hash.get(recorded.session_id, GENESIS):
            raise ImportRejectedError(
                f"line {number}: session {recorded.session_id} version {recorded.version} "
                "does not link to the record before it (hash chain broken)"
            )
        stream.append(recorded)
        last_hash[recorded.session_id] = digest
    return sessions


def _same_event(left: Recorded, right: Recorded) -> bool:
    return (
        event_to_builtins(left.event) == event_to_builtins(right.event)
        and left.recorded_at == right.recorded_at
    )


def import_jsonl(log: EventLog, lines: Iterable[bytes], *, dry_run: bool = False) -> ImportReport:
    """Check an export and append what the ledger lacks, atomically (see the module doc)."""
    return import_sessions(log, read_export(lines), dry_run=dry_run)


def import_sessions(
    log: EventLog | None, sessions: dict[str, list[Recorded]], *, dry_run: bool = False
) -> ImportReport:
    """Append what the ledger lacks of checked sessions (from `read_export`), atomically;
    `log` None stands for an empty ledger that does not exist yet (a dry run only)."""
    if log is None and not dry_run:
        raise ValueError("only a dry run can import into a ledger that does not exist")
    report = ImportReport(events_read=sum(len(stream) for stream in sessions.values()))
    appends: list[SessionAppend] = []
    for session_id, stream in sessions.items():
        present = log.read_session(session_id) if log is not None else []
        for mine, theirs in zip(present, stream, strict=False):
            if not _same_event(mine, theirs):
                raise ImportRejectedError(
                    f"session {session_id} already holds a different version {mine.version}: "
                    "refusing to mix two histories under one id"
                )
        report.events_already_present += min(len(present), len(stream))
        missing = stream[len(present):]
        if not missing:
            continue
        appends.append(
            SessionAppend(
                session_id=session_id,
                events=[recorded.event for recorded in missing],
                expected_version=len(present),
                recorded_at=[recorded.recorded_at for recorded in missing],
            )
        )
        report.events_imported += len(missing)
        report.sessions_imported += 1
    if appends and not dry_run and log is not None:
        log.append_atomically(appends)
    return report
