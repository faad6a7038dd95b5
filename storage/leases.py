"""Session leases: which process may run a session's turns, with an epoch as fencing token.

A lease names its holder (`LeaseOwner`: host, pid, process start time and a token telling
apart two runtimes of one process), its `epoch` and when it expires (the store's clock,
epoch seconds). Every store keeps one lease record per session that ever had one, and
decides every change with the pure rules below, in the same atomic step that reads the
record (LMDB: the writer's transaction; memory: its lock; PostgreSQL: a lease row locked
in the transaction):

- acquire: granted when there is no record, it was released, it expired, it is held by the
  same owner (then its epoch is kept: a re-acquire is a renewal), or it is held by the
  `take_over` owner the caller found dead; a grant to a new owner raises the epoch by one;
- renew: extends a lease still held under the same epoch and owner (even expired, as long
  as nobody took it over since);
- release: clears the holder, keeping the epoch, so the next grant is higher still;
- fence: an append made under a lease commits only if the record still holds that epoch
  and owner; else it raises StaleLeaseError and writes nothing;
- take with an append (`LeaseRequest`): the grant `acquire` would make, but only if it has the
  epoch the caller expects (its events name that epoch); else nothing is granted and nothing
  appended.

An expired lease that nobody took over still fences correctly: only a grant changes the
epoch. No I/O here.
"""

from __future__ import annotations

import msgspec


class LeaseOwner(msgspec.Struct, frozen=True, kw_only=True):
    """Who holds a lease: the process (host, pid, start time in epoch seconds, 0 unknown)
    and a token unique to one runtime in it."""

    host: str
    pid: int
    started_at: float = 0.0
    token: str = ""


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """A session's lease record: its epoch, holder (None once released) and expiry."""

    session_id: str
    epoch: int
    owner: LeaseOwner | None
    expires_at: float = 0.0

    def held_at(self, now: float) -> bool:
        """Whether someone holds it at `now` (store clock)."""
        return self.owner is not None and now < self.expires_at


def acquired(
    current: Lease | None,
    session_id: str,
    owner: LeaseOwner,
    ttl: float,
    now: float,
    take_over: LeaseOwner | None = None,
) -> Lease | None:
    """The record after `owner` asks for the lease at `now`, or None if it is not granted."""
    if current is None:
        return Lease(session_id=session_id, epoch=1, owner=owner, expires_at=now + ttl)
    if current.owner == owner:
        return Lease(session_id=session_id, epoch=current.epoch, owner=owner,
                     expires_at=now + ttl)
    if current.held_at(now) and not (take_over is not None and current.owner == take_over):
        return None
    return Lease(session_id=session_id, epoch=current.epoch + 1, owner=owner,
                 expires_at=now + ttl)


def renewed(current: Lease | None, lease: Lease, ttl: float, now: float) -> Lease | None:
    """The record after the holder of `lease` renews it at `now`, or None if it was lost."""
    if not fences(current, lease):
        return None
    return Lease(session_id=lease.session_id, epoch=lease.epoch, owner=lease.owner,
                 expires_at=now + ttl)


def released(current: Lease | None, lease: Lease) -> Lease | None:
    """The record after the holder of `lease` lets it go, or None if it was not theirs."""
    if not fences(current, lease):
        return None
    return Lease(session_id=lease.session_id, epoch=lease.epoch, owner=None, expires_at=0.0)


class LeaseRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A lease to take in the same atomic step as an append: `lease` is the grant the caller
    expects (its session, epoch and owner; its expiry is decided by the store), `ttl` and
    `take_over` are as for an acquire."""

    lease: Lease
    ttl: float
    take_over: LeaseOwner | None = None


def granted_as_expected(current: Lease | None, request: LeaseRequest, now: float) -> Lease | None:
    """The record after `request` is granted at `now`, or None if it is not granted, or
    would be granted under another epoch than the one the caller expects."""
    expected = request.lease
    if expected.owner is None:
        return None
    granted = acquired(current, expected.session_id, expected.owner, request.ttl, now,
                       request.take_over)
    return granted if granted is not None and granted.epoch == expected.epoch else None


def fences(current: Lease | None, lease: Lease) -> bool:
    """Whether `lease` is still the session's lease (same epoch and holder)."""
    return (current is not None and lease.owner is not None
            and current.epoch == lease.epoch and current.owner == lease.owner)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Lease)


def encode_lease(lease: Lease) -> bytes:
    """A lease record as stored."""
    return _encoder.encode(lease)


def decode_lease(data: bytes) -> Lease:
    """A stored lease record."""
    return _decoder.decode(data)
