"""Signed heads checkpointed into the ledger itself, on the reserved `~checkpoints` stream.

A checkpoint signs the head, appends it to the anchor file outside the ledger (the evidence
a rollback of the whole file cannot take with it) and records it in the ledger as
`HeadCheckpointed` (the evidence that travels with the ledger and its exports: who signed
which head, when). The record lands after the head it names, so it moves the head itself: a
head whose last record is the last checkpoint has nothing new to checkpoint, which keeps a
periodic checkpointer from checkpointing its own checkpoints.

`check_recorded_checkpoints` is verify's part: every recorded checkpoint's signature (against
the trusted key, if given), and that each head it names is still on the log chain (the hash
of the record at that position is the signed one). Reads and appends through the store port;
writes the anchor file through `anchors.py`.
"""

from __future__ import annotations

import logging
import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConcurrencyError, LedgerError
from ..events.model import HeadCheckpointed, Recorded
from ..events.system import CHECKPOINT_STREAM
from ..storage import EventStore
from .anchors import RollbackError, append_anchor, check_anchor
from .signing import SignedHead, sign_head, signature_problem

logger = logging.getLogger(__name__)

MAX_APPEND_ATTEMPTS = 8
"""Tries at recording a checkpoint while other processes append to the checkpoint stream."""

Problem = tuple[int | None, str]
"""Where (a position, if known) and what."""


def signed_head_of(event: HeadCheckpointed) -> SignedHead:
    """The signed head a checkpoint record holds."""
    return SignedHead(position=event.position, hash=event.hash, signed_at=event.signed_at,
                      key=event.key, public_key=event.public_key, signature=event.signature)


def last_checkpoint(log: EventStore) -> Recorded | None:
    """The last checkpoint recorded in the ledger, or None."""
    info, records = log.latest(CHECKPOINT_STREAM, 1)
    if info is None or not records:
        return None
    return records[-1]


def record_checkpoint(log: EventStore, signed: SignedHead, trigger: str) -> Recorded:
    """Append one signed head to the checkpoint stream (retried while other processes
    append to it); the record."""
    event = HeadCheckpointed(position=signed.position, hash=signed.hash,
                             signed_at=signed.signed_at, key=signed.key,
                             public_key=signed.public_key, signature=signed.signature,
                             trigger=trigger)
    for attempt in range(1, MAX_APPEND_ATTEMPTS + 1):
        info = log.info(CHECKPOINT_STREAM)
        try:
            return log.append(CHECKPOINT_STREAM, [event], info.version if info else 0)[0]
        except ConcurrencyError:
            if attempt == MAX_APPEND_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


class Checkpoint:
    """What one checkpoint did: the head signed, and the record it got in the ledger (None:
    nothing new to checkpoint, or the ledger could not be written; `problem` says which)."""

    def __init__(self, signed: SignedHead, recorded: Recorded | None, problem: str = "") -> None:
        self.signed = signed
        self.recorded = recorded
        self.problem = problem


def checkpoint_head(
    log: EventStore, key: Ed25519PrivateKey, anchor_file: str | os.PathLike[str],
    trigger: str = "on_demand", *, record: bool = True,
) -> Checkpoint:
    """Sign the head, anchor it and (with `record`) record it in the ledger; RollbackError
    (nothing written) if the ledger does not continue the last head anchored with this key.
    A head that is the last checkpoint's own record is not recorded again (its signed head
    is given back); without `record` it is anchored, unless the anchor file has it. A ledger that cannot be written keeps the anchor (logged, `problem`
    says so)."""
    check = check_anchor(log, anchor_file, key.public_key())
    if not check.ok:
        raise RollbackError(f"not checkpointed: the ledger was {check.message}")
    head = log.head()
    last = last_checkpoint(log)
    if record and last is not None and last.position == head.position \
            and isinstance(last.event, HeadCheckpointed):
        return Checkpoint(signed_head_of(last.event), None, "nothing new since the last "
                          "checkpoint")
    signed = check.last if check.last is not None and check.last.head == head \
        else sign_head(key, head)
    if signed is not check.last:
        append_anchor(anchor_file, signed)
    if not record:
        return Checkpoint(signed, None, "anchored only")
    try:
        recorded = record_checkpoint(log, signed, trigger)
    except (LedgerError, ConcurrencyError) as error:
        logger.warning("head %s:%s anchored but not recorded in the ledger: %s",
                       signed.position, signed.hash, error)
        return Checkpoint(signed, None, f"anchored, not recorded in the ledger: {error}")
    return Checkpoint(signed, recorded)


def check_recorded_checkpoints(
    log: EventStore, trusted: Ed25519PublicKey | None = None
) -> tuple[int, list[Problem]]:
    """How many checkpoints the ledger records, and their problems: a signature that does
    not hold (or not by `trusted`), a head named at or after the checkpoint's own position,
    a head no longer on the log chain."""
    records = log.read_session(CHECKPOINT_STREAM) if log.info(CHECKPOINT_STREAM) else []
    problems: list[Problem] = []
    for recorded in records:
        event = recorded.event
        if not isinstance(event, HeadCheckpointed):
            problems.append((recorded.position, f"{CHECKPOINT_STREAM} holds a "
                             f"{type(event).__name__}, not a checkpoint"))
            continue
        where = f"checkpoint at position {recorded.position} (signed at {event.signed_at})"
        problem = signature_problem(signed_head_of(event), trusted)
        if problem is not None:
            problems.append((recorded.position, f"{where}: {problem}"))
            continue
        if not 0 <= event.position < recorded.position:
            problems.append((recorded.position, f"{where} names head {event.position}, which "
                             "is not before it"))
            continue
        following = next(iter(log.read_all(event.position + 1, event.position + 1)), None)
        if following is None or following.prev_log_hash.hex() != event.hash:
            found = following.prev_log_hash.hex() if following is not None else "nothing"
            problems.append((event.position, f"{where} signed head {event.position}:"
                             f"{event.hash}, but the record there now hashes to {found}: the "
                             "history up to it was rewritten"))
    return len(records), problems
