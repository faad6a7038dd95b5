"""Where it is kept: the store port, `open_store`, the stores, the hash chain, verification.

`storage/` knows nothing of actors or agents; everything above it opens its store with
`open_store(location)` and uses only the port (`EventStore`, `AuditStore`), never a store
implementation. Importing this package does not load `lmdb`: the LMDB store (`storage.lmdb`)
is imported when a directory is opened. `EventLog` is still importable from here, lazily,
for compatibility; new code asks `open_store`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import (
    ConcurrencyError,
    CorruptLedgerError,
    InvalidSessionIdError,
    LedgerClosedError,
    LedgerError,
    LedgerFullError,
    LedgerMissingError,
    StaleLeaseError,
)
from .factory import local_directory, open_store, store_kind
from .hashing import GENESIS, Head, record_hash
from .ids import MAX_SESSION_ID_CHARS, validate_session_id
from .leases import Lease, LeaseOwner, LeaseRequest
from .memory import MemoryStore, forget_memory_store
from .port import AuditStore, EventStore, LeaseTakingStore, append_taking_lease
from .records import IndexEntry, SessionAppend, StoredValue
from .redaction import RedactionRefusedError
from .subscription import Subscription
from .verification import VerifyReport

if TYPE_CHECKING:
    from .lmdb import EventLog


def __getattr__(name: str) -> Any:
    if name == "EventLog":  # a compatibility alias: loads the LMDB store on first use
        from .lmdb import EventLog

        return EventLog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GENESIS",
    "MAX_SESSION_ID_CHARS",
    "AuditStore",
    "ConcurrencyError",
    "CorruptLedgerError",
    "EventLog",
    "EventStore",
    "Head",
    "IndexEntry",
    "InvalidSessionIdError",
    "Lease",
    "LeaseOwner",
    "LeaseRequest",
    "LeaseTakingStore",
    "LedgerClosedError",
    "LedgerError",
    "LedgerFullError",
    "LedgerMissingError",
    "MemoryStore",
    "RedactionRefusedError",
    "SessionAppend",
    "StaleLeaseError",
    "StoredValue",
    "Subscription",
    "VerifyReport",
    "append_taking_lease",
    "forget_memory_store",
    "local_directory",
    "open_store",
    "record_hash",
    "store_kind",
    "validate_session_id",
]
