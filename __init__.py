"""chatledger: an event-sourced, verifiable conversation ledger for LLM command-line agents.

Embedded use: `SessionManager` (async, a drop-in for the old in-memory manager) or `Ledger`
(sync). Admin use: the `chatledger` command. Audit: `Ledger.verify`, `chatledger verify`.

The runtime-facing names load on first use, so `import chatledger.storage` (or the events)
stays light and does not start importing actors and agent code.
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .config import Config, load_config
    from .ledger import Ledger, TurnOutcome
    from .manager import ClaudeSession, SessionManager, get_session_manager

__version__ = "0.1.0"

# A library never decides where its logs go: records reach the host's handlers (if it set
# any) and are otherwise dropped, never printed through logging's last resort.
logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "Config": "config",
    "load_config": "config",
    "Ledger": "ledger",
    "TurnOutcome": "ledger",
    "ClaudeSession": "manager",
    "SessionManager": "manager",
    "get_session_manager": "manager",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chatledger' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)


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
