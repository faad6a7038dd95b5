"""Who runs a session's turns across processes: this process's identity, whether a lease's
holder is dead, and the keeper that takes, renews and lets go of one runtime's leases.

A session actor asks the keeper for its session's lease before a turn (or, to save a commit,
for the grant in reach, which it takes with the turn's first append) and lets it go when it
has nothing left to run; the keeper renews every lease it holds on its own daemon thread
(every `ttl / RENEWALS_PER_TTL` seconds, one small store write each) and reports a lease it
lost (another process took the session over after it expired) to `on_lost`. The rules of
granting are the store's (`storage.leases`); this module only calls the store port and looks
at processes on this host. It never waits on an actor.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

from ..events import Event, Recorded
from ..storage import EventStore, Lease, LeaseOwner, LeaseRequest, append_taking_lease
from ..storage.leases import acquired

logger = logging.getLogger(__name__)

HOST = socket.gethostname()
RENEWALS_PER_TTL = 4
"""How many times a lease is renewed within its time to live (so 3 renewals may be late)."""


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (None: not there)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_started_at(pid: int) -> float:
    """When process `pid` started (epoch seconds, to the clock tick) from /proc; 0.0 where
    that cannot be known (not Linux, no such process)."""
    fields = _proc_stat(pid)
    try:
        if fields is None:
            return 0.0
        ticks = int(fields[19])
        with open("/proc/stat", encoding="ascii") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0
    return round(boot + ticks / os.sysconf("SC_CLK_TCK"), 2)


def this_process(token: str = "") -> LeaseOwner:
    """This process as a lease owner (`token` tells apart two runtimes in it)."""
    pid = os.getpid()
    return LeaseOwner(host=HOST, pid=pid, started_at=process_started_at(pid), token=token)


def holder_is_dead(owner: LeaseOwner) -> bool:
    """Whether a lease's holder is known dead: a process of this host whose pid is gone, or
    now names a process started at another time (the pid was reused)."""
    if owner.host != HOST or owner.pid <= 0:
        return False
    if owner.pid == os.getpid():
        return owner.started_at != this_process().started_at
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    fields = _proc_stat(owner.pid)
    if fields is not None and fields[0] in ("Z", "X"):  # killed, not reaped yet
        return True
    started = process_started_at(owner.pid)
    return bool(owner.started_at and started and started != owner.started_at)


def describe(owner: LeaseOwner | None) -> str:
    """A lease owner in words, for a waiting caller."""
    if owner is None:
        return "another process"
    return f"process {owner.pid} on {owner.host}"


class LeaseKeeper:
    """The session leases one runtime holds: taken on demand, renewed in the background."""

    def __init__(self, store: EventStore, ttl: float,
                 on_lost: Callable[[str, Lease], None]) -> None:
        self.store = store
        self.ttl = ttl
        self.owner = this_process(uuid.uuid4().hex[:12])
        self._on_lost = on_lost
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_periodically, daemon=True,
                                        name="chatledger-leases")
        self._thread.start()

    def held(self, session_id: str) -> Lease | None:
        """The session's lease if this runtime holds it."""
        with self._lock:
            return self._held.get(session_id)

    def acquire(self, session_id: str) -> Lease | None:
        """This runtime's lease on the session: the one it holds, or a new grant (taking it
        from a dead holder on this host at once); None while a live owner holds it. A look
        at the record comes first, so waiting costs a read, not a write. Blocks briefly."""
        held = self.held(session_id)
        if held is not None:
            return held
        request = self.grant_in_reach(session_id)
        if request is None:
            return None
        lease = self.store.acquire_lease(session_id, self.owner, self.ttl,
                                         take_over=request.take_over)
        if lease is not None:
            with self._lock:
                self._held[session_id] = lease
        return lease

    def grant_in_reach(self, session_id: str) -> LeaseRequest | None:
        """The grant this runtime would get for the session now, decided on its record as
        read (one read, nothing written): None while a live owner holds it. Blocks briefly."""
        current = self.store.lease(session_id)
        take_over: LeaseOwner | None = None
        now = self.store.clock()
        if (current is not None and current.owner is not None and current.owner != self.owner
                and current.held_at(now)):
            if not holder_is_dead(current.owner):
                return None
            take_over = current.owner
        expected = acquired(current, session_id, self.owner, self.ttl, now, take_over)
        if expected is None:
            return None
        return LeaseRequest(lease=expected, ttl=self.ttl, take_over=take_over)

    def append_taking(
        self, session_id: str, events: list[Event], expected_version: int,
        request: LeaseRequest,
    ) -> tuple[Lease, list[Recorded]] | None:
        """Take the lease `request` asks for and append `events` under it (one durable commit
        where the store can: `storage.append_taking_lease`); the lease and the records, or
        None (nothing appended, no lease) if the grant went otherwise. ConcurrencyError if
        the version is stale. Blocks the caller for the commit."""
        taken = append_taking_lease(self.store, session_id, events, expected_version, request)
        if taken is not None:
            with self._lock:
                self._held[session_id] = taken[0]
        return taken

    def holder(self, session_id: str) -> LeaseOwner | None:
        """Who holds the session's lease now, as stored (None: nobody)."""
        current = self.store.lease(session_id)
        return current.owner if current is not None else None

    def release(self, session_id: str) -> None:
        """Let the session's lease go at once, if this runtime holds it."""
        with self._lock:
            lease = self._held.pop(session_id, None)
        if lease is not None:
            try:
                self.store.release_lease(lease)
            except Exception:  # it expires on its own; the next owner waits at most its ttl
                logger.exception("could not release the lease of %s", session_id)

    def forget(self, session_id: str, lease: Lease) -> None:
        """Drop a lease without a store call: found lost (another process took the session
        over), or let go by an append (`release_lease`)."""
        with self._lock:
            held = self._held.get(session_id)
            if held is not None and held.epoch == lease.epoch:
                del self._held[session_id]

    def close(self) -> None:
        """Stop renewing and let every lease go."""
        self._stop.set()
        self._thread.join(5.0)
        with self._lock:
            held = list(self._held)
        for session_id in held:
            self.release(session_id)

    def _renew_periodically(self) -> None:
        """Renew every held lease each `ttl / RENEWALS_PER_TTL` s. The keeper's thread."""
        while not self._stop.wait(self.ttl / RENEWALS_PER_TTL):
            with self._lock:
                held = list(self._held.items())
            for session_id, lease in held:
                try:
                    renewed = self.store.renew_lease(lease, self.ttl)
                except Exception:  # disk full, closing: try again next round
                    logger.warning("could not renew the lease of %s", session_id, exc_info=True)
                    continue
                if renewed is None:
                    self.forget(session_id, lease)
                    self._on_lost(session_id, lease)
                    continue
                with self._lock:
                    if self._held.get(session_id) == lease:
                        self._held[session_id] = renewed
