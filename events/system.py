"""Reserved stream ids: the streams chatledger keeps for itself, which hold no user session.

Every id starting with `~` is reserved (an owner's budget stream, the checkpoint stream):
listings and statistics leave such streams out, expiry never touches them, and the session
commands refuse to create one. They can still be read by naming them (`chatledger events
~checkpoints`). Pure: constants and predicates, no I/O.
"""

from __future__ import annotations

RESERVED_PREFIX = "~"
"""Streams whose id starts with this are chatledger's own, not sessions."""

CHECKPOINT_STREAM = "~checkpoints"
"""The stream that records every signed head checkpointed (`HeadCheckpointed`)."""


def is_reserved(session_id: str) -> bool:
    """Whether a stream id is reserved for chatledger's own streams (not a session)."""
    return session_id.startswith(RESERVED_PREFIX)
