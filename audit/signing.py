"""Signed heads: a ledger's Ed25519 signing key, and heads signed with it.

A signed head says "this ledger's last record was at POSITION with HASH, at SIGNED_AT", under
the ledger's key; an export's signed head may also pin the last version and hash of each
session it holds. Anyone with the public key can check it, so a history whose hashes were
recomputed after an edit no longer matches what was signed.

Key files: the private key is PKCS#8 PEM, created 0600 (never rewritten if it exists); the
public key sits beside it as `<key>.pub` (SubjectPublicKeyInfo PEM). This module reads and
writes key files only; it never touches a store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ChatledgerError
from ..storage import Head

SIGNATURE_DOMAIN = b"chatledger signed head v1\n"
"""Prefixed to every signed message, so a signature made here means nothing elsewhere."""


class SigningKeyError(ChatledgerError):
    """A key file is missing, unreadable or not an Ed25519 key."""


class SignedHead(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A head signed with a ledger key (optionally with the tips of the sessions exported)."""

    position: int
    hash: str
    signed_at: str
    key: str
    public_key: str
    signature: str = ""
    sessions: dict[str, str] | None = None
    """session id -> "VERSION:HASH" of its last record (exports of some sessions only)."""

    @property
    def head(self) -> Head:
        """The position and hash signed."""
        return Head(self.position, bytes.fromhex(self.hash))


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """A short, stable name of a public key: `ed25519:` and 32 hex digits of its SHA-256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


def public_key_path(private_path: str | os.PathLike[str]) -> Path:
    """Where the public half of a key file is kept (`<key>.pub`)."""
    path = Path(private_path)
    return path.with_name(path.name + ".pub")


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    """The public key as SubjectPublicKeyInfo PEM (what `--key` takes)."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def create_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Create a new key at `path` (0600, parent made 0700 if missing) and its `.pub`;
    FileExistsError if a key is already there. The key is written whole to a private
    temporary file, then linked into place, so no reader ever sees half a key."""
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, target)  # FileExistsError if another process made one first
    finally:
        temporary.unlink(missing_ok=True)
    public_key_path(target).write_bytes(public_pem(key.public_key()))
    return key


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read a private key file (PKCS#8 PEM, Ed25519); SigningKeyError if it is not one."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise SigningKeyError(f"cannot read the signing key {path}: {error}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise SigningKeyError(f"{path} is not an unencrypted PEM private key: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def ensure_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The key at `path`, created first if there is none (two processes may race: one wins,
    the other reads its key)."""
    try:
        return create_signing_key(path)
    except FileExistsError:
        key = load_signing_key(path)
        if not public_key_path(path).exists():
            public_key_path(path).write_bytes(public_pem(key.public_key()))
        return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read a trusted public key: a PEM public key file (or a private key file, whose public
    half is taken)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise SigningKeyError(f"cannot read the key {path}: {error}") from None
    try:
        key: Any = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as error:
            raise SigningKeyError(f"{path} is not a PEM public key: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def _message(signed: SignedHead) -> bytes:
    """The exact bytes signed: the domain, then canonical JSON of every field but the
    signature and the public key (the key is named by its fingerprint)."""
    fields: dict[str, Any] = {
        "position": signed.position,
        "hash": signed.hash,
        "signed_at": signed.signed_at,
        "key": signed.key,
    }
    if signed.sessions is not None:
        fields["sessions"] = signed.sessions
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return SIGNATURE_DOMAIN + canonical.encode("ascii")


def sign_head(
    key: Ed25519PrivateKey,
    head: Head,
    *,
    sessions: dict[str, str] | None = None,
    now: datetime | None = None,
) -> SignedHead:
    """Sign a head (and, for an export of some sessions, their tips) now."""
    public_key = key.public_key()
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    unsigned = SignedHead(
        position=head.position,
        hash=head.hash.hex(),
        signed_at=moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
        key=fingerprint(public_key),
        public_key=base64.b64encode(
            public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ).decode("ascii"),
        sessions=sessions,
    )
    signature = base64.b64encode(key.sign(_message(unsigned))).decode("ascii")
    return msgspec.structs.replace(unsigned, signature=signature)


def signature_problem(
    signed: SignedHead, trusted: Ed25519PublicKey | None = None
) -> str | None:
    """Why a signed head cannot be believed (None when it can): a bad signature, a key that
    does not match its fingerprint, or (given `trusted`) a key other than the trusted one."""
    try:
        raw = base64.b64decode(signed.public_key, validate=True)
        embedded = Ed25519PublicKey.from_public_bytes(raw)
        signature = base64.b64decode(signed.signature, validate=True)
        bytes.fromhex(signed.hash)
    except ValueError as error:
        return f"the signed head is malformed ({error})"
    if fingerprint(embedded) != signed.key:
        return "the signed head's public key does not match its fingerprint"
    if trusted is not None and fingerprint(trusted) != signed.key:
        return (f"the head is signed by {signed.key}, not by the trusted key "
                f"{fingerprint(trusted)}")
    try:
        (trusted or embedded).verify(signature, _message(signed))
    except InvalidSignature:
        return "the signature does not match the signed head (forged or edited)"
    return None


def session_tip(version: int, digest: bytes) -> str:
    """How a session's last record is pinned in a signed head: `VERSION:HASH`."""
    return f"{version}:{digest.hex()}"


_signed_head_decoder = msgspec.json.Decoder(SignedHead)


def signed_head_from_json(data: bytes | str | dict[str, Any]) -> SignedHead:
    """Parse a signed head from JSON text or a decoded object; ValueError if malformed."""
    try:
        if isinstance(data, dict):
            return msgspec.convert(data, SignedHead)
        return _signed_head_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ValueError(f"not a signed head: {error}") from None
