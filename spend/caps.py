"""Spend caps: per session (a BudgetSet on its stream) and per owner (a BudgetSet on the
owner's budget stream, a reserved stream no session uses), in USD and in tokens.

A turn is refused before it starts when what was spent so far has reached a cap (a turn's
cost is known only when it ends, so the turn that crosses a cap runs; the next one is
refused). Raising the cap lets the session go on. Reads the index only; owner spend is summed
over the owner's sessions in the index, and only when the owner has a cap.

Turns in flight. One session runs one turn at a time, but an owner's sessions run side by
side, so the owner check also counts the owner's turns already running in other sessions: a
session whose index entry says `running` while its lease is held (a lease that expired
belongs to a process that died, and its turn is not counted). Each is counted for a
reservation: the larger of a setting (`spend_reserve_usd`, `spend_reserve_tokens`) and the
session's average per finished turn (the owner's average when the session has none yet). A
turn of the owner may start only while spent + reserved is below the cap. The check and the
turn's RunStarted are made under a lock per owner in the process and the owner's start lease
in the store, across processes (`owner_turn_start`), so the next check, in any process,
sees the turn. The bound this gives (docs/spend.md):

- if no turn costs more than its reservation, the owner's spend ends below the cap plus
  the cost of one turn, as for a lone session;
- in general, below cap + the last turn's cost + the sum, over the turns that were in flight
  when it started, of what each cost beyond its reservation.

A start lease held longer than its ttl and a second (a process stopped, not dead) is not
waited for further: that turn starts without it (logged), and the bound can then grow by one
turn.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
import zlib
from collections.abc import Iterator

import msgspec

from ..actors.annotations import check_cap
from ..errors import ChatledgerError, ConcurrencyError
from ..events import STATUS_RUNNING, BudgetSet, SessionInfo, TurnRefused
from ..storage import EventStore
from ..storage.leases import Lease, LeaseOwner

logger = logging.getLogger(__name__)

OWNER_STREAM_PREFIX = "~budget-"
"""Owner budget streams start with the listing's reserved prefix (`~`): never listed."""
MAX_APPEND_ATTEMPTS = 8
DEFAULT_RESERVE_USD = 0.05
DEFAULT_RESERVE_TOKENS = 20_000
"""The settings' defaults: what a turn in flight is counted for at least."""
START_LOCK_STRIPES = 64
START_LEASE_POLL = (0.002, 0.02)
"""First and longest wait (s) between tries for an owner's start lease held elsewhere."""
_start_locks = tuple(threading.Lock() for _ in range(START_LOCK_STRIPES))


class BudgetExceededError(ChatledgerError):
    """A spend cap refused a turn (raised by callers that want an exception)."""


class OwnerBudget(msgspec.Struct, frozen=True, kw_only=True):
    """An owner's caps and what the owner's sessions have spent."""

    owner: str
    usd: float | None = None
    tokens: int | None = None
    spent_usd: float = 0.0
    spent_tokens: int = 0


class Reserve(msgspec.Struct, frozen=True, kw_only=True):
    """What one turn in flight is counted for at least (the settings)."""

    usd: float = DEFAULT_RESERVE_USD
    tokens: int = DEFAULT_RESERVE_TOKENS


class OwnerFigures(msgspec.Struct, frozen=True, kw_only=True):
    """An owner's spend, and the turns in flight in its sessions with their reservations."""

    spent_usd: float = 0.0
    spent_tokens: int = 0
    turns_in_flight: int = 0
    reserved_usd: float = 0.0
    reserved_tokens: int = 0


def owner_budget_stream(owner: str) -> str:
    """The id of the stream that holds an owner's caps."""
    return OWNER_STREAM_PREFIX + hashlib.sha256(owner.encode()).hexdigest()[:48]


def _capped(log: EventStore, owner: str) -> bool:
    caps = log.info(owner_budget_stream(owner))
    return caps is not None and (caps.budget_usd is not None or caps.budget_tokens is not None)


def owner_start_lease_id(owner: str) -> str:
    """The id of the store lease that orders the turn starts of a capped owner across
    processes (a lease record only: no stream is ever written under it)."""
    return owner_budget_stream(owner) + ":start"


def _take_start_lease(log: EventStore, owner: str, holder: LeaseOwner,
                      ttl: float) -> Lease | None:
    """The owner's start lease, waited for while another process holds it (at most `ttl`
    and a second: a holder that died lets it expire). None if it could not be had: the
    turn then starts without it (logged), as it would without caps ordering."""
    deadline = time.monotonic() + ttl + 1.0
    delay = START_LEASE_POLL[0]
    while True:
        try:
            lease = log.acquire_lease(owner_start_lease_id(owner), holder, ttl)
        except Exception:  # the store cannot be written: the turn's own start will say so
            logger.exception("could not take the start lease of owner %r", owner)
            return None
        if lease is not None:
            return lease
        if time.monotonic() >= deadline:
            logger.warning("owner %r: another process held the start lease for over %.1f s; "
                           "this turn starts without it", owner, ttl + 1.0)
            return None
        time.sleep(delay)  # another process is between its cap check and its RunStarted
        delay = min(delay * 2, START_LEASE_POLL[1])


@contextlib.contextmanager
def owner_turn_start(owner: str | None, log: EventStore, holder: LeaseOwner | None = None,
                     ttl: float = 5.0) -> Iterator[None]:
    """Hold while a turn of `owner` is checked against the caps and its RunStarted recorded,
    so that the next start of the same owner sees it in flight: a lock in this process
    and, given the process's lease `holder`, the owner's start lease in the store (for
    other processes; two more commits). BLOCKS while another thread or process starts a
    turn of the owner (an index scan and one commit). Nothing is held for a session without
    an owner, nor for an owner without caps (one index read)."""
    if owner is None or not _capped(log, owner):
        yield
        return
    with _start_locks[zlib.crc32(owner.encode()) % START_LOCK_STRIPES]:
        lease = _take_start_lease(log, owner, holder, ttl) if holder is not None else None
        try:
            yield
        finally:
            if lease is not None:
                try:
                    log.release_lease(lease)
                except Exception:  # it expires after its ttl anyway
                    logger.exception("could not release the start lease of owner %r", owner)


def _finished_turns(info: SessionInfo) -> int:
    return max(0, info.turn_count - (1 if info.open_turn is not None else 0))


def owner_figures(log: EventStore, owner: str, *, excluding: str | None = None,
                  reserve: Reserve | None = None) -> OwnerFigures:
    """The owner's spend (from the index) and its turns in flight in sessions other than
    `excluding` with what each is reserved for (None: in-flight turns are not looked at)."""
    usd, tokens, finished = 0.0, 0, 0
    running: list[SessionInfo] = []
    for info in log.sessions():
        if info.owner != owner:
            continue
        usd += info.total_cost_usd
        tokens += info.total_tokens
        finished += _finished_turns(info)
        if reserve is not None and info.session_id != excluding \
                and info.status == STATUS_RUNNING and info.open_turn is not None:
            running.append(info)
    in_flight, reserved_usd, reserved_tokens = 0, 0.0, 0
    if running and reserve is not None:
        now = log.clock()
        owner_usd = usd / finished if finished else 0.0
        owner_tokens = tokens // finished if finished else 0
        for info in running:
            lease = log.lease(info.session_id)
            if lease is None or not lease.held_at(now):
                continue  # nobody runs it any more: its process died (or predates leases)
            done = _finished_turns(info)
            in_flight += 1
            reserved_usd += max(reserve.usd,
                                info.total_cost_usd / done if done else owner_usd)
            reserved_tokens += max(reserve.tokens,
                                   info.total_tokens // done if done else owner_tokens)
    return OwnerFigures(spent_usd=usd, spent_tokens=tokens, turns_in_flight=in_flight,
                        reserved_usd=reserved_usd, reserved_tokens=reserved_tokens)


def owner_spend(log: EventStore, owner: str) -> tuple[float, int]:
    """USD and tokens the owner's sessions have spent (from the index)."""
    figures = owner_figures(log, owner)
    return figures.spent_usd, figures.spent_tokens


def owner_budget(log: EventStore, owner: str) -> OwnerBudget:
    """An owner's caps (from the owner's budget stream) and spend."""
    info = log.info(owner_budget_stream(owner))
    usd, tokens = owner_spend(log, owner)
    return OwnerBudget(owner=owner, usd=info.budget_usd if info else None,
                       tokens=info.budget_tokens if info else None,
                       spent_usd=usd, spent_tokens=tokens)


def set_owner_budget(
    log: EventStore, owner: str, *, usd: float | None, tokens: int | None
) -> OwnerBudget:
    """Record an owner's caps (None: no cap of that kind); retried if another writer raced."""
    check_cap(usd, tokens)
    stream = owner_budget_stream(owner)
    event = BudgetSet(owner=owner, usd=float(usd) if usd is not None else None, tokens=tokens)
    for attempt in range(1, MAX_APPEND_ATTEMPTS + 1):
        info = log.info(stream)
        if info is not None and (info.budget_usd, info.budget_tokens) == (event.usd, tokens):
            break
        try:
            log.append(stream, [event], info.version if info else 0)
            break
        except ConcurrencyError:
            if attempt == MAX_APPEND_ATTEMPTS:
                raise
    return owner_budget(log, owner)


def _over(spent_usd: float, spent_tokens: int, cap_usd: float | None,
          cap_tokens: int | None) -> bool:
    return (cap_usd is not None and spent_usd >= cap_usd) or (
        cap_tokens is not None and spent_tokens >= cap_tokens)


def _refusal(scope: str, who: str, spent_usd: float, spent_tokens: int, cap_usd: float | None,
             cap_tokens: int | None, figures: OwnerFigures | None = None) -> TurnRefused:
    caps = " and ".join(part for part in (
        f"${cap_usd:.4f}" if cap_usd is not None else "",
        f"{cap_tokens} tokens" if cap_tokens is not None else "") if part)
    how = "chatledger budget --owner OWNER" if scope == "owner" else "chatledger budget ID"
    flight = ""
    if figures is not None and figures.turns_in_flight:
        flight = (f" and {figures.turns_in_flight} turn(s) in flight in other sessions "
                  f"reserve ${figures.reserved_usd:.4f} and {figures.reserved_tokens} tokens")
    message = (f"budget exceeded: {who} has spent ${spent_usd:.4f} and {spent_tokens} tokens"
               f"{flight} of a cap of {caps}; raise the cap ({how} --usd N) to go on")
    return TurnRefused(
        scope=scope, message=message, spent_usd=spent_usd, spent_tokens=spent_tokens,
        cap_usd=cap_usd, cap_tokens=cap_tokens,
        turns_in_flight=figures.turns_in_flight if figures else 0,
        reserved_usd=figures.reserved_usd if figures else 0.0,
        reserved_tokens=figures.reserved_tokens if figures else 0)


def budget_refusal(info: SessionInfo, log: EventStore,
                   reserve: Reserve | None = None) -> TurnRefused | None:
    """The TurnRefused that records why a turn of this session may not start (None: it may).
    Checks the session's caps, then its owner's, counting the owner's turns in flight in
    other sessions for `reserve` at least each (short index reads). Call it under
    `owner_turn_start(info.owner)` and record the turn's start before letting go."""
    if _over(info.total_cost_usd, info.total_tokens, info.budget_usd, info.budget_tokens):
        return _refusal("session", "this session", info.total_cost_usd, info.total_tokens,
                        info.budget_usd, info.budget_tokens)
    if info.owner is None:
        return None
    caps = log.info(owner_budget_stream(info.owner))
    if caps is None or (caps.budget_usd is None and caps.budget_tokens is None):
        return None
    figures = owner_figures(log, info.owner, excluding=info.session_id,
                            reserve=reserve or Reserve())
    if _over(figures.spent_usd + figures.reserved_usd,
             figures.spent_tokens + figures.reserved_tokens,
             caps.budget_usd, caps.budget_tokens):
        return _refusal("owner", f"owner {info.owner!r}", figures.spent_usd,
                        figures.spent_tokens, caps.budget_usd, caps.budget_tokens, figures)
    return None
