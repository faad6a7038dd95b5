"""Where a ledger's signing key and anchor file live, from its settings.

By default both sit beside the ledger directory (`<ledger>.signing-key`, its `.pub`, and
`<ledger>.anchors.jsonl`), outside the LMDB files, so `compact` and copies of the ledger
leave them alone. This module only computes paths.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config


def _beside(ledger_path: str, suffix: str) -> Path:
    ledger = Path(ledger_path)
    return ledger.with_name(ledger.name + suffix)


def signing_key_path(config: Config) -> Path:
    """The private signing key file: the `signing_key` setting, else `<ledger>.signing-key`."""
    return Path(config.signing_key) if config.signing_key else _beside(config.path, ".signing-key")


def anchor_file_path(config: Config) -> Path:
    """The anchor file: the `anchor_file` setting, else `<ledger>.anchors.jsonl`."""
    return Path(config.anchor_file) if config.anchor_file else _beside(config.path, ".anchors.jsonl")
