"""Where it is kept: the event log port, its LMDB implementation, the hash chain, verification.

`storage/` knows nothing of actors or agents; everything above it uses the port's names
(`append`, `read_session`, `read_all`, `subscribe`, `head`, `verify`), never LMDB itself.
"""

from ..errors import (
    ConcurrencyError,
    CorruptLedgerError,
    InvalidSessionIdError,
    LedgerClosedError,
    LedgerError,
    LedgerFullError,
)
from .hashing import GENESIS, Head, record_hash
from .ids import MAX_SESSION_ID_CHARS, validate_session_id
from .lmdb_log import EventLog, IndexEntry, SessionAppend
from .port import EventStore
from .subscription import Subscription
from .verification import VerifyReport

__all__ = [
    "GENESIS",
    "MAX_SESSION_ID_CHARS",
    "ConcurrencyError",
    "CorruptLedgerError",
    "EventLog",
    "EventStore",
    "Head",
    "IndexEntry",
    "InvalidSessionIdError",
    "LedgerClosedError",
    "LedgerError",
    "LedgerFullError",
    "SessionAppend",
    "Subscription",
    "VerifyReport",
    "record_hash",
    "validate_session_id",
]
