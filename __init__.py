"""chatledger: an event-sourced, verifiable conversation ledger for LLM command-line agents.

Embedded use: `SessionManager` (async, a drop-in for the old in-memory manager) or `Ledger`
(sync). Admin use: the `chatledger` command. Audit: `Ledger.verify`, `chatledger verify`.
"""

from .config import Config, load_config
from .errors import (
    ChatledgerError,
    ConcurrencyError,
    ConfigError,
    CorruptLedgerError,
    InvalidCommandError,
    InvalidSessionIdError,
    LedgerError,
    LedgerFullError,
    UnknownSessionError,
)
from .ledger import Ledger, TurnOutcome
from .manager import ClaudeSession, SessionManager, get_session_manager

__version__ = "0.1.0"

__all__ = [
    "ChatledgerError",
    "ClaudeSession",
    "ConcurrencyError",
    "Config",
    "ConfigError",
    "CorruptLedgerError",
    "InvalidCommandError",
    "InvalidSessionIdError",
    "Ledger",
    "LedgerError",
    "LedgerFullError",
    "SessionManager",
    "TurnOutcome",
    "UnknownSessionError",
    "__version__",
    "get_session_manager",
    "load_config",
]
