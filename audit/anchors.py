"""Anchors: signed heads kept in a file outside the ledger, to catch a rollback or a rewrite.

The anchor file is JSON Lines, one signed head per line, appended (O_APPEND, fsync) by
`chatledger head --checkpoint` and by a running backend. A ledger whose head is behind the
last anchored head was rolled back; one whose record at the anchored position has another
hash was rewritten. Comparing a head needs only the store's `head()` and `read_all()`: the
hash of the record at P is the head's hash (P is the last) or the log link of record P + 1.
Keep the anchor file where whoever could roll the ledger back cannot (another disk, a
write-once store): anchors kept beside the ledger are rolled back with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ChatledgerError
from ..storage import EventStore, Head
from .signing import SignedHead, fingerprint, sign_head, signature_problem

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SignedHead)


class RollbackError(ChatledgerError):
    """The ledger does not continue the last anchored head (rolled back or rewritten)."""


class HeadComparison(msgspec.Struct, frozen=True):
    """How a ledger stands against a head saved earlier: `matches`, or why not."""

    matches: bool
    message: str


class AnchorCheck(msgspec.Struct, kw_only=True):
    """The ledger against its last anchored head: checked or not, and what was found."""

    anchor_file: str
    anchors: int = 0
    last: SignedHead | None = None
    ok: bool = True
    message: str = "no anchored head yet"
    ignored: list[str] = msgspec.field(default_factory=list)


def compare_head(log: EventStore, saved: Head) -> HeadComparison:
    """Whether the ledger still holds `saved` (same hash at that position) or how it does not."""
    current = log.head()
    if saved.position > current.position:
        return HeadComparison(
            False,
            f"the ledger ends at position {current.position}, before the saved head at "
            f"{saved.position}: records were removed (truncated or rolled back)",
        )
    if saved.position == 0:
        return HeadComparison(True, "head matches (the empty ledger)")
    if saved.position == current.position:
        digest = current.hash
    else:
        following = next(iter(log.read_all(saved.position + 1, saved.position + 1)), None)
        if following is None:
            return HeadComparison(False, f"the record after position {saved.position} is missing")
        digest = following.prev_log_hash
    if digest != saved.hash:
        return HeadComparison(
            False,
            f"the record at position {saved.position} has hash {digest.hex()}, not the saved "
            f"{saved.hash.hex()}: the history up to it was rewritten",
        )
    later = current.position - saved.position
    return HeadComparison(True, f"head matches ({later} record(s) appended since)")


def read_anchors(path: str | os.PathLike[str]) -> tuple[list[SignedHead], list[str]]:
    """The signed heads of an anchor file in order, and the lines skipped (torn or not one)."""
    anchors: list[SignedHead] = []
    skipped: list[str] = []
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return anchors, skipped
    except OSError as error:
        raise ChatledgerError(f"cannot read the anchor file {path}: {error}") from None
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            anchors.append(_decoder.decode(line))
        except (msgspec.DecodeError, msgspec.ValidationError):
            skipped.append(f"anchor line {number} is not a signed head (torn or edited)")
    return anchors, skipped


def append_anchor(path: str | os.PathLike[str], signed: SignedHead) -> None:
    """Append one signed head to the anchor file, durably (the file is created 0644)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    line = _encoder.encode(signed) + b"\n"
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(descriptor, line)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def check_anchor(
    log: EventStore, path: str | os.PathLike[str], trusted: Ed25519PublicKey | None
) -> AnchorCheck:
    """The ledger against the furthest anchored head signed by `trusted` (any valid signer if
    None): a rollback or rewrite behind it fails the check; bad anchor lines are listed."""
    anchors, skipped = read_anchors(path)
    result = AnchorCheck(anchor_file=os.fspath(path), ignored=skipped)
    wanted = fingerprint(trusted) if trusted is not None else None
    candidates = [signed for signed in anchors if wanted is None or signed.key == wanted]
    result.anchors = len(candidates)  # other keys' anchors (a shared file) are not ours
    last: SignedHead | None = None
    for signed in sorted(candidates, key=lambda signed: signed.position, reverse=True):
        problem = signature_problem(signed, trusted)
        if problem is None:
            last = signed
            break
        result.ignored.append(f"anchor at position {signed.position}: {problem}")
    if last is None:
        return result
    result.last = last
    comparison = compare_head(log, last.head)
    result.ok = comparison.matches
    if comparison.matches:
        result.message = (f"continues the head anchored at {last.signed_at} "
                          f"(position {last.position})")
    else:
        result.message = (f"rolled back or rewritten behind the head anchored at "
                          f"{last.signed_at}: {comparison.message}")
    return result


def checkpoint(
    log: EventStore, key: Ed25519PrivateKey, path: str | os.PathLike[str]
) -> SignedHead:
    """Sign the current head and append it to the anchor file; RollbackError (nothing
    written) if the ledger does not continue the last head anchored with this key."""
    check = check_anchor(log, path, key.public_key())
    if not check.ok:
        raise RollbackError(f"not checkpointed: the ledger was {check.message}")
    head = log.head()
    if check.last is not None and check.last.head == head:
        return check.last
    signed = sign_head(key, head)
    append_anchor(path, signed)
    return signed
