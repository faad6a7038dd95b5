"""What an auditor is told about a ledger before anything is handed over: is it intact (the
hash chains, the indexes, the last anchored head), when was that checked, and its head signed.

`check_ledger` verifies the whole ledger (or some sessions) through the store's `verify` and
the per-session check, compares it with the anchor file, checks each fork against its
parent (`lineage.py`) and the signed heads recorded in the ledger (`ledger_checkpoints.py`); `open_signing_key` finds (or
creates) the ledger's key from the settings. Export, `history`, `show` and the HTML page use
these; nothing here writes the ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..config import Config
from ..events.system import CHECKPOINT_STREAM
from ..storage import AuditStore, Head
from ..storage.hashing import HASH_SIZE
from .anchors import AnchorCheck, HeadComparison, check_anchor, compare_head
from .export_check import Verification
from .ledger_checkpoints import check_recorded_checkpoints
from .lineage import check_lineage
from .locations import anchor_file_path, signing_key_path
from .session_check import verify_session
from .signing import (
    SignedHead,
    SigningKeyError,
    ensure_signing_key,
    load_signing_key,
    session_tip,
    sign_head,
)

logger = logging.getLogger(__name__)


class LedgerCheck(msgspec.Struct, kw_only=True):
    """The verdict on a ledger (or some of its sessions) at one moment."""

    ok: bool
    checked_at: datetime
    records_checked: int = 0
    sessions_checked: int = 0
    first_bad_position: int | None = None
    reason: str | None = None
    problems: list[str] = msgspec.field(default_factory=list)
    head: Head
    anchor: AnchorCheck | None = None
    head_check: HeadComparison | None = None
    signed_head: SignedHead | None = None
    checkpoints: int = 0
    """How many signed heads the ledger records (`~checkpoints`), each checked."""
    notes: list[str] = msgspec.field(default_factory=list)
    """What could not be checked here (a fork whose parent this ledger does not hold)."""
    records_redacted: int = 0
    """Records whose content was redacted (intact: their commitments stay in the chains)."""

    def verification(self) -> Verification:
        """The verdict as an export header states it."""
        return Verification(
            ok=self.ok,
            checked_at=self.checked_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            records_checked=self.records_checked,
            first_bad_position=self.first_bad_position,
            reason=self.reason,
            anchor=self.anchor.message if self.anchor is not None else None,
        )


def open_signing_key(config: Config, *, create: bool = True) -> Ed25519PrivateKey | None:
    """The ledger's signing key (created 0600 where the settings say if `create` and there is
    none); None, with a warning logged, when it cannot be read or made."""
    path = signing_key_path(config)
    try:
        return ensure_signing_key(path) if create else load_signing_key(path)
    except (SigningKeyError, OSError) as error:
        if create or path.exists():
            logger.warning("no signing key: %s", error)
        return None


def check_ledger(
    log: AuditStore,
    config: Config,
    *,
    session_ids: Iterable[str] | None = None,
    key: Ed25519PrivateKey | None = None,
    trusted: Ed25519PublicKey | None = None,
    saved_head: Head | None = None,
    progress: Callable[[int], None] | None = None,
) -> LedgerCheck:
    """Verify the ledger (or only `session_ids`, each on its own), compare it with the last
    anchored head and a `saved_head` (whole-ledger checks only), and sign its head with
    `key` if it is intact. The anchors are checked against `trusted`, else `key`'s public
    half, else any valid signature."""
    checked_at = datetime.now(timezone.utc)
    if session_ids is None:
        report = log.verify(saved_head, progress=progress)
        check = LedgerCheck(
            ok=report.ok, checked_at=checked_at, records_checked=report.records_checked,
            sessions_checked=report.sessions_checked,
            first_bad_position=report.first_bad_position, reason=report.reason,
            problems=list(report.problems), head=report.head,
            records_redacted=report.records_redacted,
        )
        verifier = trusted or (key.public_key() if key is not None else None)
        anchor = check_anchor(log, anchor_file_path(config), verifier)
        check.anchor = anchor
        if not anchor.ok:
            _fail(check, anchor.last.position if anchor.last else None, anchor.message)
        _check_lineage_and_checkpoints(check, log, None, verifier)
        if saved_head is not None:
            check.head_check = compare_head(log, saved_head)
            if not check.head_check.matches and check.ok:
                _fail(check, saved_head.position, check.head_check.message)
        if check.ok and key is not None:
            check.signed_head = sign_head(key, check.head)
        return check
    check = LedgerCheck(ok=True, checked_at=checked_at, head=log.head())
    tips: dict[str, str] = {}
    for session_id in session_ids:
        part = verify_session(log, session_id, progress)
        check.records_checked += part.records_checked
        check.records_redacted += part.records_redacted
        check.sessions_checked += 1
        if not part.ok:
            _fail(check, part.first_bad_position, f"session {session_id}: {part.reason}")
            check.problems.extend(part.problems[1:])
        _check_lineage_and_checkpoints(check, log, session_id, trusted or (
            key.public_key() if key is not None else None))
        stream = log.read_session_raw(session_id) if key is not None else []
        if stream:
            tips[session_id] = session_tip(len(stream), bytes(stream[-1][1][:HASH_SIZE]))
    if check.ok and key is not None:
        check.signed_head = sign_head(key, check.head, sessions=tips)
    return check


def _check_lineage_and_checkpoints(
    check: LedgerCheck, log: AuditStore, session_id: str | None,
    trusted: Ed25519PublicKey | None,
) -> None:
    """Add to `check` what forks (each against its parent) and the checkpoints recorded in
    the ledger (signatures, heads on the chain) show; `session_id` None: the whole ledger."""
    for finding in check_lineage(log, None if session_id is None else [session_id]):
        if finding.unverifiable:
            check.notes.append(finding.message)
        else:
            _fail(check, finding.position, finding.message)
    if session_id is None or session_id == CHECKPOINT_STREAM:
        check.checkpoints, problems = check_recorded_checkpoints(log, trusted)
        for position, problem in problems:
            _fail(check, position, problem)


def _fail(check: LedgerCheck, position: int | None, reason: str) -> None:
    if check.ok:
        check.ok = False
        check.first_bad_position = position
        check.reason = reason
    where = f"position {position}: " if position is not None else ""
    check.problems.append(where + reason)


def describe_check(check: LedgerCheck) -> str:
    """One line for people: clean, or tampered at position N and why."""
    if check.ok:
        redacted = (f" ({check.records_redacted} redacted: content removed, commitments kept)"
                    if check.records_redacted else "")
        return (f"verified: {check.records_checked} records in {check.sessions_checked} "
                f"session(s) intact{redacted}")
    where = (f": first bad position {check.first_bad_position}"
             if check.first_bad_position is not None else "")
    return f"TAMPERED or inconsistent{where}: {check.reason}"
