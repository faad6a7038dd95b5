"""The store port: what the layers above `storage/` may ask of any store, split by who asks.

`EventStore` is what actors, the runtime and the session commands need: append with an
expected version, read, follow, and the session index. `AuditStore` adds what audits and
maintenance need: records with their stored bytes and hashes, the atomic multi-session append
of an import, verify, rebuild, a compacted copy and sizes. Every store implements both
(`open_store` returns an `AuditStore`); the contract tests in tests/test_store_contract.py
run against each. `append_taking_lease` takes a session's lease and appends under it: in one
atomic step where the store does it (`LeaseTakingStore`: memory, LMDB), else by the two
existing steps one after the other (PostgreSQL, until it gets its own; a Protocol's default
body would reach only stores that subclass it, which PostgresStore does not). This module
must not import any store implementation (nor `lmdb`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol, cast

from ..errors import StaleLeaseError
from ..events.model import Event, Recorded, UnknownEvent
from ..events.projections import SessionInfo
from .hashing import Head
from .leases import Lease, LeaseOwner, LeaseRequest
from .records import IndexEntry, SessionAppend, StoredValue
from .subscription import Subscription
from .verification import VerifyReport


class EventStore(Protocol):
    """An append-only, hash-chained store of session event streams."""

    @property
    def location(self) -> str:
        """Where the store is, as given to `open_store`."""
        ...

    def append(
        self,
        session_id: str,
        events: Iterable[Event | UnknownEvent],
        expected_version: int,
        *,
        lease: Lease | None = None,
        release_lease: bool = False,
    ) -> list[Recorded]:
        """Append atomically and durably; raise ConcurrencyError if the version is stale,
        StaleLeaseError if `lease` is no longer the session's (checked in the same step);
        `release_lease` lets that lease go in the same step, once the events are written."""
        ...

    def acquire_lease(
        self, session_id: str, owner: LeaseOwner, ttl: float, *,
        take_over: LeaseOwner | None = None,
    ) -> Lease | None:
        """Take the session's lease for `ttl` seconds (store clock), or None if another
        live owner holds it; `take_over` names a holder the caller knows is dead."""
        ...

    def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend a lease for `ttl` seconds from now; None if it was taken over."""
        ...

    def release_lease(self, lease: Lease) -> bool:
        """Let a lease go at once (its epoch stays); whether it was still ours."""
        ...

    def lease(self, session_id: str) -> Lease | None:
        """The session's lease record as stored (held, expired or released), or None."""
        ...

    def clock(self) -> float:
        """The store's clock (epoch seconds), against which leases expire."""
        ...

    def read_session(self, session_id: str, from_version: int = 1) -> list[Recorded]:
        """One session's records from a version on (empty if it has none)."""
        ...

    def latest(self, session_id: str, count: int) -> tuple[SessionInfo | None, list[Recorded]]:
        """A session's current info and its last `count` records, as of one moment."""
        ...

    def read_all(self, from_position: int = 1, to_position: int | None = None) -> Iterator[Recorded]:
        """Every record from a position on (to `to_position`), in log order."""
        ...

    def subscribe(self, from_position: int = 1, poll_interval: float = 0.2) -> Subscription:
        """Catch up, then follow live appends."""
        ...

    def head(self) -> Head:
        """The last position and its hash (0 and the genesis hash when empty)."""
        ...

    def info(self, session_id: str) -> SessionInfo | None:
        """A session's info from the index, or None."""
        ...

    def require_info(self, session_id: str) -> SessionInfo:
        """A session's info from the index; raise UnknownSessionError if unknown."""
        ...

    def sessions(self) -> list[SessionInfo]:
        """Every session's info from the index."""
        ...

    def close(self) -> None:
        """Release this handle (later calls raise LedgerClosedError)."""
        ...

    def __enter__(self) -> EventStore:
        """Use the store in a `with` block; it is closed at the end."""
        ...

    def __exit__(self, *exc_info: object) -> None:
        """Close the store."""
        ...


class AuditStore(EventStore, Protocol):
    """A store with its audit and maintenance surface: what `open_store` returns."""

    def __enter__(self) -> AuditStore:
        """Use the store in a `with` block; it is closed at the end."""
        ...

    def read_raw(self, from_position: int = 1) -> Iterator[StoredValue]:
        """Every record as stored (position, hash + record bytes), in log order."""
        ...

    def read_session_raw(self, session_id: str, from_version: int = 1) -> list[StoredValue]:
        """One session's records as stored, found through its stream index alone."""
        ...

    def index_entry(self, session_id: str) -> IndexEntry | None:
        """A session's index entry as stored (its info and last hash), or None."""
        ...

    def append_atomically(self, appends: Sequence[SessionAppend]) -> list[list[Recorded]]:
        """Append to several sessions at once: all commit, or (a stale version) none does."""
        ...

    def append_verbatim(self, records: Sequence[bytes]) -> Head:
        """Append stored records as they are (same positions, links, hashes); all or nothing:
        LogMovedError if they do not continue the log, ValueError if they do not link."""
        ...

    def redact(
        self, session_id: str, version: int | None, *, reason: str = "",
        redacted_by: str | None = None,
    ) -> list[Recorded]:
        """Remove the content (and salt) of one version of a session, None: of every record
        of it that still has some, keeping each commitment, and append a Redacted event per
        record; returns those records. Every chain still verifies. RedactionRefusedError
        (nothing changed) for an unknown version, an event without content, a record already
        redacted, one written before the redaction-ready format, or a damaged one."""
        ...

    def verify(
        self, saved_head: Head | None = None, *, progress: Callable[[int], None] | None = None
    ) -> VerifyReport:
        """Recompute both hash chains and the indexes of one snapshot; check a saved head."""
        ...

    def rebuild_index(self) -> int:
        """Recompute the session index from the log; returns the session count."""
        ...

    def copy_to(self, destination: str | os.PathLike[str], *, compact: bool = True) -> int:
        """Write a consistent (compacted) copy into an empty directory; returns its bytes."""
        ...

    def disk_size(self) -> int:
        """Bytes the store's data takes."""
        ...

    def map_size(self) -> int:
        """Bytes the store has reserved for its data (LMDB's map; else its data size)."""
        ...


class LeaseTakingStore(Protocol):
    """A store that takes a lease and appends under it in one atomic step."""

    def append_taking_lease(
        self,
        session_id: str,
        events: Iterable[Event | UnknownEvent],
        expected_version: int,
        request: LeaseRequest,
    ) -> tuple[Lease, list[Recorded]] | None:
        """`append_taking_lease` below, in one transaction (one durable commit)."""
        ...


def append_taking_lease(
    store: EventStore,
    session_id: str,
    events: Iterable[Event | UnknownEvent],
    expected_version: int,
    request: LeaseRequest,
) -> tuple[Lease, list[Recorded]] | None:
    """Take the session's lease as `request` expects (the grant `acquire_lease` would make,
    under the epoch the caller expects and its events name) and append `events` under it;
    returns the lease as granted and the records. Nothing is appended unless the lease is
    taken: None when it is not granted so (a live owner holds it, or its epoch moved since
    the caller looked). A stale `expected_version` raises ConcurrencyError, nothing appended,
    and leaves nobody holding the lease: a one-step store never takes it (the version is
    checked in the transaction that would write it), the two-step default takes it and lets
    it go again (its epoch stays raised, which only makes a stale holder staler). Call it
    for a lease the caller does not hold."""
    batch = list(events)
    if not batch:
        raise ValueError("append_taking_lease needs events to append")
    if request.lease.session_id != session_id:
        raise ValueError("the lease to take must be the append's own session's")
    if hasattr(store, "append_taking_lease"):
        return cast(LeaseTakingStore, store).append_taking_lease(
            session_id, batch, expected_version, request)
    return _take_lease_then_append(store, session_id, batch, expected_version, request)


def _take_lease_then_append(
    store: EventStore,
    session_id: str,
    events: list[Event | UnknownEvent],
    expected_version: int,
    request: LeaseRequest,
) -> tuple[Lease, list[Recorded]] | None:
    """The default of `append_taking_lease`: acquire, then append fenced by the grant (two
    commits, the same outcome); a grant under another epoch, or an append that fails, lets
    the lease go again."""
    owner = request.lease.owner
    if owner is None:
        return None
    granted = store.acquire_lease(session_id, owner, request.ttl, take_over=request.take_over)
    if granted is None:
        return None
    if granted.epoch != request.lease.epoch:
        store.release_lease(granted)
        return None
    try:
        records = store.append(session_id, events, expected_version, lease=granted)
    except StaleLeaseError:  # taken over between the two steps: it was never ours to use
        return None
    except BaseException:
        with contextlib.suppress(Exception):  # it expires after its ttl; the first error stands
            store.release_lease(granted)
        raise
    return granted, records
