"""Check a JSONL export on its own, with no ledger: the header, every line, the chains, the
signed head. `chatledger verify FILE.jsonl --key PUBLIC` and `import` both use it.

An export is a header line, then one line per record in log order (see `records`). The
header says what the file holds (`scope`: the whole ledger, or some sessions), how many
records, the source ledger's head, how the log links were made (`log_chain`: `complete`
when each record's log link is the line before it, `source` when the links are those of the
source ledger, where other sessions' records sat between), the verification done before
the export, and the signed head. Exports written before headers existed are still read
(without a signature). Pure: this module reads the lines it is given and nothing else.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..events.codec import decode_record, event_from_builtins
from ..events.model import Recorded, Redacted
from ..storage import GENESIS, Head, record_hash
from ..storage.checks import unrecorded_redaction_problem
from ..storage.hashing import CONTENT_ALTERED, CONTENT_REDACTED, examine_record
from .records import event_json
from .signing import SignedHead, fingerprint, session_tip, signature_problem

EXPORT_FORMAT = 1
SCOPE_LEDGER = "ledger"
SCOPE_SESSIONS = "sessions"
LOG_CHAIN_COMPLETE = "complete"
LOG_CHAIN_SOURCE = "source"
LOG_CHAIN_NOTES = {
    LOG_CHAIN_COMPLETE: "each record's prev_log_hash is the hash of the line before it: the "
                        "whole log chain, from the first record to the head",
    LOG_CHAIN_SOURCE: "each record's prev_log_hash is its link in the source ledger, where "
                      "records of sessions left out sat between; each session's chain is "
                      "whole, and its last record is pinned in the signed head",
}
MAX_PROBLEMS = 20

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()


class Verification(msgspec.Struct, kw_only=True):
    """The check of the source ledger made for an export, as the export states it."""

    ok: bool
    checked_at: str
    records_checked: int = 0
    first_bad_position: int | None = None
    reason: str | None = None
    anchor: str | None = None


class ExportHeader(msgspec.Struct, kw_only=True):
    """The first line of an export (see the module doc)."""

    chatledger_export: int = EXPORT_FORMAT
    scope: str
    records: int
    head: str
    log_chain: str
    log_chain_note: str = ""
    sessions: list[str] | None = None
    exported_at: str = ""
    verification: Verification | None = None
    signed_head: SignedHead | None = None


class ExportLine(msgspec.Struct, frozen=True):
    """One checked record line: the record, its stored bytes and its hash."""

    recorded: Recorded
    stored: bytes
    digest: bytes
    redacted: bool = False
    """Its content was redacted (removed; its commitment is in the hash)."""


class ExportCheck(msgspec.Struct, kw_only=True):
    """What the check of an export found."""

    ok: bool = True
    scope: str = "unknown"
    records: int = 0
    sessions: int = 0
    head: str | None = None
    signed_by: str | None = None
    signed_at: str | None = None
    signature: str = "missing"
    """`trusted` (checked against the trusted key), `untrusted` (valid, but no key to trust
    was given), `missing`, or `invalid`."""
    source_verification: Verification | None = None
    problems: list[str] = msgspec.field(default_factory=list)
    records_redacted: int = 0
    """Records whose content was redacted (intact: their commitments are in the chains)."""

    def fail(self, problem: str) -> None:
        """Record a problem; the export does not verify."""
        self.ok = False
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


_header_decoder = msgspec.json.Decoder(ExportHeader)


def _parse_line(number: int, line: bytes) -> ExportLine | str:
    """Decode and check one record line on its own: hash, stored bytes, readable fields;
    the line, or why it is wrong (a line nested too deeply to read is wrong too)."""
    try:
        return _parse_record_line(number, line)
    except RecursionError:
        return f"line {number}: nested too deeply to be an export line"


def _parse_record_line(number: int, line: bytes) -> ExportLine | str:
    try:
        data = _json_decoder.decode(line)
        stored = base64.b64decode(data["record"], validate=True)
        claimed_hash = bytes.fromhex(data["hash"])
    except (msgspec.DecodeError, KeyError, TypeError, ValueError) as error:
        return f"line {number}: not a chatledger export line ({error})"
    try:
        digest, content = examine_record(stored)
        recorded = decode_record(stored)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
        if record_hash(stored) != claimed_hash:
            return f"line {number}: the record does not match its hash"
        return f"line {number}: the stored record does not decode ({error})"
    if digest != claimed_hash:
        return f"line {number}: the record does not match its hash"
    if content == CONTENT_ALTERED:
        return f"line {number}: the record's content does not match its commitment (edited)"
    readable = {
        "position": recorded.position,
        "session_id": recorded.session_id,
        "version": recorded.version,
        "prev_session_hash": recorded.prev_session_hash.hex(),
        "prev_log_hash": recorded.prev_log_hash.hex(),
    }
    for key, value in readable.items():
        theirs = data.get(key)
        if key in ("position", "prev_log_hash") and theirs is None:
            continue  # not in every older export line
        if theirs != value:
            return f"line {number}: its {key!r} was edited (it differs from the stored record)"
    expected = event_json(recorded.event)
    theirs = data.get("event")
    # The same bytes as this release writes them, or (older exports left defaults out) the
    # same event once every default is filled in.
    if _json_encoder.encode(theirs) != _json_encoder.encode(expected) and (
        _normalised_event(theirs) != _normalised(expected)
    ):
        return f"line {number}: its 'event' was edited (it differs from the stored record)"
    return ExportLine(recorded, stored, claimed_hash, content == CONTENT_REDACTED)


def _normalised(value: Any) -> Any:
    return _json_decoder.decode(_json_encoder.encode(value))


def _normalised_event(value: Any) -> Any:
    """The readable event with every default filled in (older exports left defaults out)."""
    if not isinstance(value, dict):
        return value
    try:
        return _normalised(event_json(event_from_builtins(value)))
    except (msgspec.ValidationError, msgspec.EncodeError, TypeError, ValueError):
        return value


def check_export(
    lines: Iterable[bytes],
    trusted: Ed25519PublicKey | None = None,
    *,
    keep: bool = False,
) -> tuple[ExportCheck, ExportHeader | None, list[ExportLine]]:
    """Check an export (see the module doc): the report, the header (None for an export
    written before headers) and, with `keep`, the checked lines in file order."""
    report = ExportCheck()
    header: ExportHeader | None = None
    kept: list[ExportLine] = []
    session_tips: dict[str, tuple[int, bytes]] = {}
    redacted: dict[str, list[int]] = {}  # session -> versions whose content is gone
    recorded_redactions: set[tuple[str, int]] = set()  # what Redacted events name
    log_hash = GENESIS
    log_chain_whole = True
    first = True
    previous: ExportLine | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if first:
            first = False
            if _is_header(line):
                header = _read_header(number, line, report)
                continue
        parsed = _parse_line(number, line)
        if isinstance(parsed, str):
            report.fail(parsed)
            continue
        recorded = parsed.recorded
        report.records += 1
        tip_version, tip_hash = session_tips.get(recorded.session_id, (0, GENESIS))
        if recorded.version != tip_version + 1:
            report.fail(
                f"line {number}: session {recorded.session_id} jumps to version "
                f"{recorded.version} (expected {tip_version + 1}); export whole sessions"
            )
        elif recorded.prev_session_hash != tip_hash:
            report.fail(
                f"line {number}: session {recorded.session_id} version {recorded.version} "
                "does not link to the record before it (hash chain broken)"
            )
        session_tips[recorded.session_id] = (recorded.version, parsed.digest)
        if parsed.redacted:
            report.records_redacted += 1
            redacted.setdefault(recorded.session_id, []).append(recorded.version)
        if isinstance(recorded.event, Redacted):
            recorded_redactions.add((recorded.session_id, recorded.event.version))
        if recorded.position != report.records or recorded.prev_log_hash != log_hash:
            log_chain_whole = False
        log_hash = parsed.digest
        previous = parsed
        if keep:
            kept.append(parsed)
    report.sessions = len(session_tips)
    for session_id, versions in redacted.items():
        missing = [version for version in versions
                   if (session_id, version) not in recorded_redactions]
        if missing:
            report.fail(unrecorded_redaction_problem(session_id, missing))
    last = Head(previous.recorded.position, previous.digest) if previous else Head(0, GENESIS)
    if header is None:
        report.scope = SCOPE_LEDGER if log_chain_whole else SCOPE_SESSIONS
        report.head = str(last) if log_chain_whole else None
        if trusted is not None:
            report.fail("the export carries no signed head (written before signed exports, "
                        "or its header was removed)")
        return report, header, kept
    _check_against_header(report, header, last, log_chain_whole, session_tips, trusted)
    return report, header, kept


def _is_header(line: bytes) -> bool:
    try:
        data = _json_decoder.decode(line)
    except (msgspec.DecodeError, RecursionError):
        return False
    return isinstance(data, dict) and "chatledger_export" in data


def _read_header(number: int, line: bytes, report: ExportCheck) -> ExportHeader | None:
    try:
        header = _header_decoder.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        report.fail(f"line {number}: the export header is malformed ({error})")
        return None
    if header.chatledger_export > EXPORT_FORMAT:
        report.fail(f"the export is format {header.chatledger_export}; this release reads "
                    f"{EXPORT_FORMAT}: upgrade chatledger")
    return header


def _check_against_header(
    report: ExportCheck,
    header: ExportHeader,
    last: Head,
    log_chain_whole: bool,
    session_tips: dict[str, tuple[int, bytes]],
    trusted: Ed25519PublicKey | None,
) -> None:
    """The records against what the header states, and the header's signed head."""
    report.scope = header.scope
    report.head = header.head
    report.source_verification = header.verification
    if header.records != report.records:
        report.fail(f"the header announces {header.records} records, the file holds "
                    f"{report.records} (lines removed or added)")
    tips = {session_id: session_tip(version, digest)
            for session_id, (version, digest) in session_tips.items()}
    if header.scope == SCOPE_LEDGER:
        if not log_chain_whole:
            report.fail("the log chain is broken: a record does not link to the line before it")
        if str(last) != header.head:
            report.fail(f"the last record is {last}, the header's head is {header.head}")
    elif header.scope == SCOPE_SESSIONS:
        if header.sessions is not None and sorted(header.sessions) != sorted(session_tips):
            report.fail("the sessions in the file are not the ones the header lists")
    else:
        report.fail(f"unknown export scope {header.scope!r}")
    signed = header.signed_head
    if signed is None:
        if trusted is not None:
            report.fail("the export carries no signed head (the source ledger failed "
                        "verification or had no signing key)")
        return
    report.signed_by = signed.key
    report.signed_at = signed.signed_at
    problem = signature_problem(signed, trusted)
    if problem is not None:
        report.signature = "invalid"
        report.fail(problem)
        return
    report.signature = "trusted" if trusted is not None else "untrusted"
    if f"{signed.position}:{signed.hash}" != header.head:
        report.fail(f"the signed head {signed.position}:{signed.hash} is not the header's head "
                    f"{header.head}")
    if header.scope == SCOPE_SESSIONS and signed.sessions != tips:
        report.fail("the sessions' last records differ from the ones signed (edited, and the "
                    "hashes recomputed)")
    if header.scope == SCOPE_LEDGER and signed.sessions is not None:
        report.fail("a whole-ledger export's signed head pins sessions: not from chatledger")


def describe_signature(report: ExportCheck, trusted: Ed25519PublicKey | None) -> str:
    """One line on the export's signature, for people."""
    if report.signature == "trusted" and trusted is not None:
        return f"signed by the trusted key {fingerprint(trusted)} at {report.signed_at}"
    if report.signature == "untrusted":
        return (f"signed by {report.signed_by} at {report.signed_at} (not checked against a "
                "trusted key: pass --key PUBLIC)")
    if report.signature == "invalid":
        return "the signature does not hold"
    return "not signed"
