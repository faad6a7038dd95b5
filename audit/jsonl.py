"""JSONL export and import: a header, then one record per line, checked on the way back in.

Each record line carries the record as readers want it (position, session, version, time,
every event field) and, in `record`, the exact stored bytes (base64) with their `hash`; the
header (see `export_check`) states the scope, the head and the signed head. An export holds
the records up to the head it states, even if the ledger grows meanwhile.

Import checks the whole file first (`export_check.check_export`, and the signature against a
trusted key when one is given). A whole-ledger export going into an empty ledger, or into a
copy it continues, is appended verbatim (`append_verbatim`): same positions, same hashes,
same head. Anything else is merged: each session's missing events are appended with their
original times, all sessions in one transaction, and a session whose history differs from
what the ledger holds is refused; merged records get new positions and so new hashes.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ChatledgerError, CorruptLedgerError
from ..events.codec import decode_record, event_to_builtins
from ..events.model import Recorded
from ..storage import AuditStore, SessionAppend
from ..storage.hashing import HASH_SIZE
from .export_check import (
    LOG_CHAIN_COMPLETE,
    LOG_CHAIN_NOTES,
    LOG_CHAIN_SOURCE,
    SCOPE_LEDGER,
    SCOPE_SESSIONS,
    ExportHeader,
    ExportLine,
    Verification,
    check_export,
)
from .records import is_redacted, record_to_json, record_to_line
from .signing import session_tip, sign_head

__all__ = ["CheckedImport", "ImportRejectedError", "ImportReport", "check_import",
           "export_jsonl", "import_checked", "import_jsonl", "record_to_json"]

_json_encoder = msgspec.json.Encoder()


class ImportRejectedError(ChatledgerError):
    """An import file failed its checks; nothing was imported."""


class ImportReport(msgspec.Struct, kw_only=True):
    """What an import did: events appended and skipped (already present), sessions touched,
    whether positions and hashes were kept, and the export's signature."""

    events_read: int = 0
    events_imported: int = 0
    events_already_present: int = 0
    sessions_imported: int = 0
    verbatim: bool = False
    signature: str = "missing"


def _now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _whole_ledger_lines(log: AuditStore, last_position: int) -> Iterator[tuple[int, bytes]]:
    for position, stored in log.read_raw():
        if position > last_position:
            return
        yield position, bytes(stored)


def export_jsonl(
    log: AuditStore,
    out: IO[bytes],
    session_ids: Iterable[str] | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    key: Ed25519PrivateKey | None = None,
    verification: Verification | None = None,
) -> int:
    """Write the export (header, then records up to the current head) to a binary stream;
    signed with `key` unless `verification` says the ledger failed its check. Returns the
    number of records written. Some sessions are read through their stream index (held in
    memory together); the whole ledger is streamed."""
    head = log.head()
    signer = key if verification is None or verification.ok else None
    header: ExportHeader
    if session_ids is None:
        header = ExportHeader(
            scope=SCOPE_LEDGER, records=head.position, head=str(head),
            log_chain=LOG_CHAIN_COMPLETE, log_chain_note=LOG_CHAIN_NOTES[LOG_CHAIN_COMPLETE],
            exported_at=_now_text(), verification=verification,
            signed_head=sign_head(signer, head) if signer is not None else None,
        )
        lines: Iterable[tuple[int, bytes]] = _whole_ledger_lines(log, head.position)
    else:
        wanted = sorted(set(session_ids))
        streams: list[list[tuple[int, bytes]]] = []
        tips: dict[str, str] = {}
        for session_id in wanted:
            log.require_info(session_id)
            stream = [(position, bytes(value)) for position, value in
                      log.read_session_raw(session_id) if position <= head.position]
            streams.append(stream)
            if stream:
                tips[session_id] = session_tip(len(stream), stream[-1][1][:HASH_SIZE])
        header = ExportHeader(
            scope=SCOPE_SESSIONS, records=sum(len(stream) for stream in streams),
            head=str(head), log_chain=LOG_CHAIN_SOURCE,
            log_chain_note=LOG_CHAIN_NOTES[LOG_CHAIN_SOURCE], sessions=wanted,
            exported_at=_now_text(), verification=verification,
            signed_head=sign_head(signer, head, sessions=tips) if signer is not None else None,
        )
        lines = heapq.merge(*streams)
    out.write(_json_encoder.encode(header) + b"\n")
    count = 0
    for position, stored in lines:
        try:
            recorded = decode_record(stored[HASH_SIZE:])
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise CorruptLedgerError(
                f"the record at position {position} does not decode ({error}): the ledger is "
                "damaged; restore it from a copy (`chatledger verify` lists every bad place)"
            ) from None
        out.write(_json_encoder.encode(record_to_line(recorded, stored)) + b"\n")
        count += 1
        if progress is not None:
            progress(1)
    return count


def _same_event(left: Recorded, right: Recorded) -> bool:
    return (
        event_to_builtins(left.event) == event_to_builtins(right.event)
        and left.recorded_at == right.recorded_at
    )


def _verbatim_start(log: AuditStore | None, header: ExportHeader | None, scope: str,
                    lines: list[ExportLine]) -> int | None:
    """How many leading records of a whole-ledger export the ledger (None: an empty one)
    already holds exactly (its head is one of them), or None if it cannot go in verbatim."""
    if scope != SCOPE_LEDGER or (header is not None and header.scope != SCOPE_LEDGER):
        return None
    if log is None:
        return 0
    head = log.head()
    if head.position == 0:
        return 0
    if head.position <= len(lines) and lines[head.position - 1].digest == head.hash:
        return head.position
    return None


def import_jsonl(
    log: AuditStore,
    lines: Iterable[bytes],
    *,
    dry_run: bool = False,
    trusted: Ed25519PublicKey | None = None,
) -> ImportReport:
    """Check an export and append what the ledger lacks, atomically (see the module doc)."""
    return import_checked(log, check_import(lines, trusted), dry_run=dry_run)


@dataclass(frozen=True)
class CheckedImport:
    """An export file that passed every check (`check_import`), ready to go in."""

    header: ExportHeader | None
    scope: str
    signature: str
    lines: list[ExportLine]


def check_import(lines: Iterable[bytes], trusted: Ed25519PublicKey | None = None) -> CheckedImport:
    """Check a whole export file before any ledger is opened (a refused file creates
    nothing); ImportRejectedError with the first problem."""
    check, header, parsed = check_export(lines, trusted, keep=True)
    if not check.ok:
        raise ImportRejectedError(check.problems[0])
    return CheckedImport(header=header, scope=check.scope, signature=check.signature,
                         lines=parsed)


def import_checked(
    log: AuditStore | None, checked: CheckedImport, *, dry_run: bool = False
) -> ImportReport:
    """Append what the ledger lacks of a checked export, atomically; `log` None stands for an
    empty ledger that does not exist yet (a dry run only)."""
    if log is None and not dry_run:
        raise ValueError("only a dry run can import into a ledger that does not exist")
    parsed = checked.lines
    report = ImportReport(events_read=len(parsed), signature=checked.signature)
    start = _verbatim_start(log, checked.header, checked.scope, parsed)
    if start is not None:
        missing = parsed[start:]
        report.verbatim = True
        report.events_already_present = start
        report.events_imported = len(missing)
        report.sessions_imported = len({line.recorded.session_id for line in missing})
        if missing and not dry_run and log is not None:
            log.append_verbatim([line.stored for line in missing])
        return report
    sessions: dict[str, list[Recorded]] = {}
    for line in parsed:
        sessions.setdefault(line.recorded.session_id, []).append(line.recorded)
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
        missing_records = stream[len(present):]
        if not missing_records:
            continue
        appends.append(
            SessionAppend(
                session_id=session_id,
                events=[recorded.event for recorded in missing_records],
                expected_version=len(present),
                recorded_at=[recorded.recorded_at for recorded in missing_records],
            )
        )
        report.events_imported += len(missing_records)
        report.sessions_imported += 1
    if appends and not dry_run and log is not None:
        log.append_atomically(appends)
        _redact_again(log, parsed, sessions)
    return report


def _redact_again(log: AuditStore, parsed: list[ExportLine],
                  sessions: dict[str, list[Recorded]]) -> None:
    """Merged records get new salts and hashes: remove again the content of those redacted
    in the export (their Redacted events came with them, so none is added)."""
    for line in parsed:
        if line.redacted and line.recorded.session_id in sessions:
            info = log.info(line.recorded.session_id)
            record = log.read_session_raw(line.recorded.session_id,
                                          line.recorded.version)[:1]
            if info is not None and record and not is_redacted(record[0][1][HASH_SIZE:]):
                log.redact(line.recorded.session_id, line.recorded.version,
                           reason="redacted in the exported ledger")
