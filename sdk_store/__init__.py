"""A Claude Agent SDK `SessionStore` kept in a chatledger ledger.

    from claude_agent_sdk import ClaudeAgentOptions, query
    from chatledger.sdk_store import LedgerSessionStore

    store = LedgerSessionStore.open("./ledger")
    options = ClaudeAgentOptions(session_store=store)

Install the SDK with the `sdk` extra (`pip install 'chatledger[sdk]'`). Without it the store
still works (its `*_blocking` methods, and its async ones under asyncio) but keeps no
session summaries.
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
