"""Open a store from one setting: the one place that picks a store implementation.

`open_store(location, **options)`:
- a directory path (a `str` or an `os.PathLike`) is an LMDB ledger, as always;
- `memory:` is a new in-memory store, `memory:NAME` the process's in-memory store NAME;
- `postgresql://...` (or `postgres://`) is the shared PostgreSQL store for several nodes
  (storage/postgresql; needs the `postgresql` extra, psycopg 3).

Everything above `storage/` opens its store here and holds it by the port's Protocols. The
implementations are imported only when asked for, so importing `chatledger.storage` does
not load `lmdb`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LedgerMissingError
from .memory import MEMORY_SCHEME, MemoryStore
from .port import AuditStore

POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")
LMDB_OPTIONS = frozenset({"map_size", "max_map_size", "readonly"})


def store_kind(location: str | os.PathLike[str]) -> str:
    """Which store a location names: "memory", "postgresql" or "lmdb"."""
    if isinstance(location, str):
        if location.startswith(MEMORY_SCHEME):
            return "memory"
        if location.startswith(POSTGRESQL_SCHEMES):
            return "postgresql"
    return "lmdb"


def local_directory(location: str | os.PathLike[str]) -> Path | None:
    """The directory a location's store keeps its files in (None: not a directory store)."""
    return Path(location) if store_kind(location) == "lmdb" else None


def open_store(
    location: str | os.PathLike[str], *, create: bool = True, **options: Any
) -> AuditStore:
    """Open the store at `location` (see the module docstring); `create=False` raises
    LedgerMissingError where there is no ledger yet. LMDB takes `map_size`,
    `max_map_size` and `readonly`; PostgreSQL the options of `PostgresStore` (`readonly`,
    `pool_size`, `connect_timeout`, ...); the memory store takes none."""
    kind = store_kind(location)
    if kind == "postgresql":
        try:
            from .postgresql import open_postgresql_store
        except ImportError as error:
            raise ConfigError(
                f"a PostgreSQL ledger needs psycopg 3 ({error}): "
                "pip install 'chatledger[postgresql]'"
            ) from None
        return open_postgresql_store(str(location), create=create, **options)
    if kind == "memory":
        if options:
            raise TypeError(f"the memory store takes no options: {', '.join(sorted(options))}")
        return MemoryStore(str(location), create=create)
    unknown = set(options) - LMDB_OPTIONS
    if unknown:
        raise TypeError(f"the LMDB store does not take: {', '.join(sorted(unknown))}")
    if not create and not (Path(location).expanduser() / "data.mdb").exists():
        raise LedgerMissingError(f"there is no ledger at {os.fspath(location)}")
    from .lmdb import EventLog

    return EventLog(location, **options)
