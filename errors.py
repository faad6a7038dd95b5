"""The exceptions chatledger raises: one base class, each message says what to do.

This module holds only exception types; it must not import anything from the package.
"""

from __future__ import annotations

SESSION_NOT_FOUND = "Session not found"
"""What chatledger says of a session id the ledger does not hold."""


class ChatledgerError(Exception):
    """Base class of every error chatledger raises on purpose."""


class InvalidSessionIdError(ChatledgerError, ValueError):
    """A session id is empty, too long, or holds control characters or path separators."""


class UnknownSessionError(ChatledgerError, KeyError):
    """No session with this id exists in the ledger."""

    @classmethod
    def for_session(cls, session_id: str) -> UnknownSessionError:
        """The error for `session_id`: "Session not found: <id>"."""
        return cls(f"{SESSION_NOT_FOUND}: {session_id}")

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown session"


class InvalidCommandError(ChatledgerError, ValueError):
    """A command was refused by the session's current state (bad mode, expired, ...)."""


class InvalidEventError(ChatledgerError, ValueError):
    """An event cannot be stored as given: a field of the wrong type, text that is not valid
    Unicode, a number MessagePack cannot hold; nothing was written."""


class ConcurrencyError(ChatledgerError):
    """The session moved on since it was read: `expected_version` is stale; nothing was written."""

    def __init__(self, session_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"session {session_id!r} is at version {actual}, not the expected {expected}: "
            "reload the session and retry"
        )
        self.session_id = session_id
        self.expected = expected
        self.actual = actual


class StaleLeaseError(ChatledgerError):
    """An append was made under a session lease another process has taken over since (a
    higher epoch): the caller no longer owns the session; nothing was written."""

    def __init__(self, session_id: str, epoch: int) -> None:
        super().__init__(
            f"session {session_id!r} was taken over by another process (lease epoch {epoch} "
            "is stale): nothing was written"
        )
        self.session_id = session_id
        self.epoch = epoch


class LedgerError(ChatledgerError):
    """The ledger cannot be opened or written: wrong directory, corrupted file, newer format."""


class CorruptLedgerError(LedgerError):
    """The ledger's files are damaged: restore from a copy or export what still verifies."""


class LedgerFullError(LedgerError):
    """The ledger reached its maximum size (or the disk is full); nothing was written."""


class LedgerClosedError(LedgerError):
    """The ledger was closed; open it again to go on."""


class LedgerMissingError(LedgerError):
    """There is no ledger where one was to be opened without creating it."""


class ConfigError(ChatledgerError, ValueError):
    """A configuration setting has a bad value; the message names the setting."""
