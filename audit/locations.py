"""Where a ledger's signing key and anchor file live, from its settings.

By default both sit beside the ledger directory (`<ledger>.signing-key`, its `.pub`, and
`<ledger>.anchors.jsonl`), outside the LMDB files, so `compact` and copies of the ledger
leave them alone. A ledger that is not a directory has no "beside": an in-memory store's
key lives in a private temporary directory of this process (as ephemeral as the store), and
a PostgreSQL ledger's in the user data directory under a name derived from its URL (several
nodes must then be given one shared `signing_key` and `anchor_file`). This module only
computes paths.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from ..config import Config
from ..storage import store_kind


def _beside(ledger_path: str, suffix: str) -> Path:
    kind = store_kind(ledger_path)
    if kind == "lmdb":
        ledger = Path(ledger_path)
        return ledger.with_name(ledger.name + suffix)
    if kind == "memory":
        folder = Path(tempfile.gettempdir()) / f"chatledger-memory-keys-{os.getpid()}"
        name = ledger_path.removeprefix("memory:") or "anonymous"
    else:
        parts = urlsplit(ledger_path)  # the password never names a file
        try:
            where = f"{parts.hostname}:{parts.port}{parts.path}"
        except ValueError:  # a host list (db1:5432,db2:5432): named as written, no user
            where = parts.netloc.rpartition("@")[2] + parts.path
        folder = Path(platformdirs.user_data_dir("chatledger")) / "keys"
        name = "postgresql-" + hashlib.sha256(where.encode()).hexdigest()[:16]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder / (hashlib.sha256(name.encode()).hexdigest()[:16] + suffix)


def signing_key_path(config: Config) -> Path:
    """The private signing key file: the `signing_key` setting, else `<ledger>.signing-key`."""
    return Path(config.signing_key) if config.signing_key else _beside(config.path, ".signing-key")


def anchor_file_path(config: Config) -> Path:
    """The anchor file: the `anchor_file` setting, else `<ledger>.anchors.jsonl`."""
    return Path(config.anchor_file) if config.anchor_file else _beside(config.path, ".anchors.jsonl")
