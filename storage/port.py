"""The event store port: what actors, the manager and the CLI may ask of any store.

LMDB (`EventLog`) is the embedded default; a shared PostgreSQL store will implement the same
protocol, and the contract tests run against every implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from ..events.model import Event, Recorded, UnknownEvent
from ..events.projections import SessionInfo
from .hashing import Head
from .subscription import Subscription
from .verification import VerifyReport


class EventStore(Protocol):
    """An append-only, hash-chained store of session event streams."""

    def append(
        self, session_id: str, events: Iterable[Event | UnknownEvent], expected_version: int
    ) -> list[Recorded]:
        """Append atomically and durably; raise ConcurrencyError if the version is stale."""
        ...

    def read_session(self, session_id: str, from_version: int = 1) -> list[Recorded]:
        """One session's records from a version on."""
        ...

    def latest(self, session_id: str, count: int) -> tuple[SessionInfo | None, list[Recorded]]:
        """A session's current info and its last `count` records, as of one moment."""
        ...

    def read_all(self, from_position: int = 1, to_position: int | None = None) -> Iterator[Recorded]:
        """Every record from a position on, in log order."""
        ...

    def subscribe(self, from_position: int = 1, poll_interval: float = 0.2) -> Subscription:
        """Catch up, then follow live appends."""
        ...

    def head(self) -> Head:
        """The last position and its hash."""
        ...

    def info(self, session_id: str) -> SessionInfo | None:
        """A session's info from the index, or None."""
        ...

    def sessions(self) -> list[SessionInfo]:
        """Every session's info from the index."""
        ...

    def verify(
        self, saved_head: Head | None = None, *, progress: Callable[[int], None] | None = None
    ) -> VerifyReport:
        """Recompute the hash chains and indexes."""
        ...

    def rebuild_index(self) -> int:
        """Recompute the session index from the log."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...
