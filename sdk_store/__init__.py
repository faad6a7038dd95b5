"""A Claude Agent SDK `SessionStore` kept in a chatledger ledger.

    from claude_agent_sdk import ClaudeAgentOptions, query
    from chatledger.sdk_store import LedgerSessionStore

    store = LedgerSessionStore.open("./ledger")
    options = ClaudeAgentOptions(session_store=store)

Needs the `sdk` extra (`pip install 'chatledger[sdk]'`); `keys` works without it.
"""

from .keys import TranscriptKey, ledger_session_id, transcript_key
from .store import LedgerSessionStore, open_ledger_store

__all__ = [
    "LedgerSessionStore",
    "TranscriptKey",
    "ledger_session_id",
    "open_ledger_store",
    "transcript_key",
]
