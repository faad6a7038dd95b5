"""Group commit for the PostgreSQL store: appends waiting at the same moment, from any number
of sessions of this node, go into one transaction and one commit, written by one of the
callers (the leader, at most `writers` at once, default 1) on its own thread.

Why group commit rather than pipelining each caller's transaction: a commit costs one WAL
flush request and a round of locks and latches whatever it holds; sixteen sessions appending
on sixteen connections pay that sixteen times (PostgreSQL's own group commit merges only the
flushes that happen to overlap), one transaction for many sessions pays it once. Why leaders
rather than a writer thread: an append nobody else competes with runs on the caller's thread
with no hand-off; and a leader seals after giving up its place, so the next batch commits
while the previous one is being sealed. Why one leader by default: measured here, three
leaders made batches of ~3.5 instead of ~8 at 16 sessions, and cost ~40 % more CPU per append
on both sides for no more throughput. Why a pipeline (`pipeline.py`: one connection in libpq's
pipeline mode, up to `pipeline_depth` calls unanswered): a leader gives its place up as soon
as its batch's call is sent, so the next leader decides and sends the next batch while this
one runs; the server starts it the moment this one commits, instead of a round trip and the
client's work later. (psycopg's own pipeline waits for every answer at each Sync: no overlap,
and it cost more client CPU than the round trips it saved.) Why a batch's callers are woken in
turn (`answer_in_turn`, as the LMDB writer does): a thread's wake is the dearest thing a
batch does on this kind of VM (measured: ~27 µs of CPU each), and callers woken all at once
wake again to wait for the GIL that the others hold; woken one by one, each running caller
wakes the next. (Tried and dropped, measured in alternated runs: one caller writing for others
across several batches, sending and landing them all on its thread; it saved a few wakes per
batch and was no faster.)

One batch, one call (`chatledger.append_batch_sealed`, followed by a Sync, so the call is the
whole transaction and its commit):
1. the leader decides every append with the port's rules (`fences`, `released`, the expected
   versions, the fold of the session index) on the state it assumes: each session's last
   (version, info) as this writer last read or wrote it (a version's info never changes) or
   "none yet" for a session created by its first append here, and each fenced session's lease
   as its first fenced append holds it;
2. the function takes every touched session's advisory lock, in key order (no deadlock between
   nodes), and only then checks that the stored versions and leases are the assumed ones; the
   transaction gets its id at its first insert, after the locks, so a later append to a
   session always has a larger `txid` than the one before it (the sealer's order relies on
   this);
3. if they are, it inserts the events (the primary key (session, version) is the last guard
   against a duplicate), upserts the index entries and stores the released leases; a stale or
   fenced append was answered with ConcurrencyError or StaleLeaseError and wrote nothing, the
   others commit;
4. the events go in sealed, with the records the leader computed for the positions after the
   head it assumes (its last seal, or the sealer's, taught it the head and each session's
   last hash), when the server finds those assumptions true under the seal row's lock, which
   it takes only if free and only then (a node that appends alone seals every batch this
   way: one call, one write per event); else the call writes nothing. A batch sent while the
   one before it is unanswered assumes the head that one leaves if it seals; when it does
   not, the next cannot seal either, and the writer assumes no head until it seals again. A
   batch for a session that a batch in flight writes waits for that one's answer.
If the assumed state was not the stored one (another node appended or sealed, this writer
never saw the session, the index was rebuilt) nothing was written, and the batch is decided
again on the state read under the locks in one transaction of a few statements
(`_in_transaction`, also used directly when a session's info at its expected version or the
head is unknown here), and sealed there for the head found under the seal row's lock, which
it waits for (SEAL_ROW_WAIT at most, then the rows go in unsealed and the sealer places
them). While another node seals too, batches go there directly (`_contended`), and each takes
every caller of this node that is back in time (`_gather`): the nodes take turns at the seal
row, one batch each. A lone node's leaders gather too when the batching policy says so
(`batching.py`: measured, gathering is faster when other processes take the CPU, sending
at once when the machine has CPU to spare).

A lost connection is resolved by re-reading: if the rows are there with our content the
append committed and is answered as such, if not it is tried again; never twice.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeoutError
from datetime import datetime, timezone
from typing import Any

import msgspec
import psycopg
from psycopg import errors as pg_errors

from ...errors import ConcurrencyError, LedgerError, StaleLeaseError
from ...events.codec import SCHEMA_VERSION, decode_envelope
from ...events.model import Recorded
from ...events.projections import SessionInfo, evolve
from ..hashing import GENESIS, Head
from ..leases import Lease, fences, released
from ..records import ContentSeal, EncodedAppend, stored_record
from . import leases
from .arrays import (
    bytea_array,
    float8_array,
    int4_array,
    int8_array,
    text_array,
    timestamptz_array,
)
from .batching import BatchPolicy
from .connection import ConnectionLostError, Pool, describe
from .pipeline import StatementPipeline
from .records import encode_info, lease_columns, with_seal
from .schema import SEAL_CHANNEL, SESSION_LOCK_CLASS, session_lock_key
from .sealer import Sealer, SealKey
from .verbatim import SEALED_WRITE

logger = logging.getLogger(__name__)

PIPELINE_TIMEOUT = 60.0
"""How long a batch's call may wait for room in the pipeline, and then for its answer."""
SEALS_PER_LEADER = 4
"""How many seals in a row a leader makes for others before leaving them to the sealer."""
KNOWN_SESSIONS = 16384
"""How many sessions' last (version, info) a writer keeps to assume their state."""


class AppendOutcomeUnknownError(ConnectionLostError):
    """The connection was lost while an append committed and the server did not come back in
    time to tell: read the session's version before appending again. A kind of
    ConnectionLostError: a caller that handles a lost server handles this one too."""


class _Request:
    """One caller's appends and, once written, its answer. The caller sleeps on a bare lock
    (a latch: cheaper than a Future and an Event), released to wake it when its answer is
    set, when a leader's place is free for it, or by the caller before it in a chain of
    answers (`answer_in_turn`)."""

    __slots__ = ("appends", "taken", "_latch", "_done", "_result", "_error", "_then",
                 "_abandoned", "caller")

    def __init__(self, appends: list[EncodedAppend]) -> None:
        self.appends = appends
        self.taken = False
        """Whether a leader took it into a batch (under the writer's lock)."""
        self._latch = threading.Lock()
        self._latch.acquire()
        self._done = False
        self._result: list[list[Recorded]] | None = None
        self._error: BaseException | None = None
        self._then: _Request | None = None
        """The next caller of a chain of answers (see `answer_in_turn`), woken by this one."""
        self._abandoned = False
        """Its caller stopped waiting (timed out): a chain of answers leaves it out."""
        self.caller = threading.get_ident()
        """The thread that waits for it."""

    def wake(self) -> None:
        """Wake the caller (once for any number of calls before it wakes)."""
        with contextlib.suppress(RuntimeError):  # released already: it will wake anyway
            self._latch.release()

    def sleep(self, timeout: float) -> None:
        """Sleep until woken or `timeout` seconds have passed."""
        self._latch.acquire(timeout=timeout)

    def done(self) -> bool:
        """Whether the answer is set."""
        return self._done

    def set_result(self, result: list[list[Recorded]]) -> None:
        """Answer with these records (the first answer wins)."""
        if not self._done:
            self._result, self._done = result, True
            self.wake()

    def set_exception(self, error: BaseException) -> None:
        """Answer with this error (the first answer wins)."""
        if not self._done:
            self._error, self._done = error, True
            self.wake()

    def result(self, timeout: float) -> list[list[Recorded]]:
        """The answer, waiting up to `timeout` seconds (then concurrent.futures' timeout);
        passes a chain of answers on to the next caller first."""
        deadline = time.monotonic() + timeout
        while not self._done:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._latch.acquire(timeout=remaining):
                with _CHAINS:
                    if not self._done:
                        self._abandoned = True
                        raise FutureTimeoutError()
        self._pass_on()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _pass_on(self) -> None:
        """Wake the next caller of this one's chain of answers, if any (once). A chain is
        made of answered requests only, whose callers can no longer give up."""
        following, self._then = self._then, None
        if following is not None:
            following.wake()

    def settle(self, result: list[list[Recorded]]) -> None:
        """Set the answer without waking the caller (see `answer_in_turn`)."""
        if not self._done:
            self._result, self._done = result, True


_CHAINS = threading.Lock()
"""Orders a caller's giving up (before its answer is set) against the chains of answers
being made (after)."""


def answer_in_turn(requests: list[_Request]) -> None:
    """Wake callers whose answers are all set one after the other: each, once running, wakes
    the next (`_Request.result`), instead of the answering thread waking them all at once.
    Measured here, a thread's wake costs ~27 µs of CPU on this kind of VM, and callers woken
    together each wake again to wait for the GIL the others hold."""
    me = threading.get_ident()  # the answering thread's own request needs no wake
    with _CHAINS:
        chain = [request for request in requests
                 if not request._abandoned and request.caller != me]
        for current, following in zip(chain, chain[1:], strict=False):
            current._then = following
    if chain:
        chain[0].wake()


class _LeaderPlace:
    """A leader's place, given up once: when its batch's call is sent (the next leader
    prepares the next batch meanwhile), or when its batch is done."""

    __slots__ = ("_hand_over", "_held")

    def __init__(self, hand_over: Callable[[], None]) -> None:
        self._hand_over = hand_over
        self._held = True

    def give_up(self) -> None:
        """Let the next leader in (once)."""
        if self._held:
            self._held = False
            self._hand_over()


_LOCK = "SELECT pg_advisory_xact_lock(%s, key) FROM unnest(%s::int4[]) AS key"
_VERSIONS = (
    "SELECT s.session_id, s.version, s.info, e.hash FROM chatledger.sessions s"
    " LEFT JOIN chatledger.events e ON e.session_id = s.session_id AND e.version = s.version"
    " WHERE s.session_id = ANY(%s)"
)
# One statement writes the events and the index entries and says the transaction's id.
_WRITE = (
    "WITH events AS (INSERT INTO chatledger.events"
    "  (session_id, version, recorded_at, schema_version, event)"
    "  SELECT * FROM unnest(%s::text[], %s::int8[], %s::timestamptz[], %s::int4[], %s::bytea[])),"
    " sessions AS (INSERT INTO chatledger.sessions (session_id, version, info)"
    "  SELECT * FROM unnest(%s::text[], %s::int8[], %s::bytea[])"
    "  ON CONFLICT (session_id) DO UPDATE SET version = excluded.version, info = excluded.info,"
    "   position = NULL)"
    " SELECT pg_current_xact_id()::text"
)
# Binary parameters, encoded by `arrays.py` (psycopg's generic list dumper cost more client CPU
# than anything else in a batch); an empty array is sent as NULL, which the function reads as
# empty. The call is a prepared statement of the writer's pipeline (see `pipeline.py`).
_EVENT_ARRAYS = (text_array, int8_array, timestamptz_array, int4_array, bytea_array)
"""Encoders of a batch's event columns: session, version, recorded_at, schema, event."""
_INDEX_ARRAYS = (text_array, int8_array, bytea_array)
"""Encoders of its index entries' columns: session, version, info."""
_BATCH_ARRAYS = (
    int4_array, text_array, int8_array, bytea_array,  # locks, sessions, versions, hashes
    text_array, int8_array, text_array, int8_array, float8_array, text_array,  # fenced leases
    *_EVENT_ARRAYS, *_INDEX_ARRAYS,
    text_array, int8_array, text_array, int8_array, float8_array, text_array,  # released
    float8_array,  # leases
)
"""The encoder of each array parameter of `APPEND_BATCH`, in order."""
_BATCH_TYPES = (
    "int4[]", "text[]", "int8[]", "bytea[]",
    "text[]", "int8[]", "text[]", "int8[]", "float8[]", "text[]",
    "text[]", "int8[]", "timestamptz[]", "int4[]", "bytea[]",
    "text[]", "int8[]", "bytea[]",
    "text[]", "int8[]", "text[]", "int8[]", "float8[]", "text[]", "float8[]",
    "int8", "bytea", "bytea[]", "bytea[]", "text",  # the assumed head, the seal, the channel
)
APPEND_BATCH_NAME = "chatledger_append_batch"
APPEND_BATCH = ("SELECT assumed, sealed, txid FROM chatledger.append_batch_sealed("
                + ", ".join(f"${number}::{kind}" for number, kind in
                            enumerate(_BATCH_TYPES, start=1)) + ")")
"""The writer's one call per batch, prepared on its pipeline's connection."""
_WRITE_ARRAYS = (*_EVENT_ARRAYS, *_INDEX_ARRAYS)
"""The encoder of each array parameter of `_WRITE`, in order."""
_SEALED_WRITE_ARRAYS = (
    text_array, int8_array, timestamptz_array, int4_array, int8_array, bytea_array,  # events
    bytea_array, text_array, int8_array, bytea_array, int8_array)  # index entries
"""The encoder of each array parameter of SEALED_WRITE, in order."""
_INT8 = struct.Struct("!q")
SEAL_ROW_WAIT = 0.1
"""How long the slow path waits for the seal row before it leaves its batch to the sealer."""
GATHER_WAIT = 0.005
"""How long a gathering leader waits at most for the callers the batch before answered to
come back, so that its batch takes them too (measured, two nodes of eight sessions each:
batches of ~7 instead of ~4, 6.2-6.6k appends/s together instead of 3.4-3.7k; 2 ms gathered
a little less)."""
# The head as locked (the row's latest version, read again once the lock is ours), held from
# here to the commit. It is taken only while no committed row waits for the sealer (which
# places those first): else no row, and no lock. The wait for it is limited (the uncorrelated
# subqueries run before the row is locked), and the limit stays for the transaction's writes:
# a wait of theirs (an index rebuild, a redaction) also leaves the batch to the sealer.
_LOCK_SEAL = (
    "SELECT position, hash FROM chatledger.seal"
    f" WHERE (SELECT set_config('lock_timeout', '{int(SEAL_ROW_WAIT * 1000)}ms', true))"
    "  IS NOT NULL AND NOT EXISTS (SELECT 1 FROM chatledger.events WHERE position IS NULL)"
    " FOR UPDATE"
)
_FIND = (
    "SELECT e.session_id, e.version, e.txid::text, e.recorded_at, e.event, e.record"
    " FROM chatledger.events e JOIN unnest(%s::text[], %s::int8[]) AS k(session_id, version)"
    "  ON e.session_id = k.session_id AND e.version = k.version"
)


def _last_hashes(outcome: _Batch, hashes: list[bytes]) -> dict[str, tuple[int, bytes]]:
    """Each session's last (version, hash) among a sealed batch's records (`placed` and
    `hashes` are in the batch's order)."""
    return {session_id: (version, digest)
            for (session_id, version), digest in zip(outcome.placed, hashes, strict=True)}


class _Batch:
    """The rows one transaction writes and each request's answer."""

    def __init__(self, size: int) -> None:
        self.answers: list[list[list[Recorded]] | ConcurrencyError | StaleLeaseError | None
                           ] = [None] * size
        self.columns: tuple[list[Any], ...] = ([], [], [], [], [])
        self.first_rows: list[tuple[str, int, datetime, bytes]] = []
        self.index: dict[str, tuple[int, SessionInfo]] = {}
        self.leases: dict[str, Lease] = {}
        """session -> its stored lease record, when an append is fenced"""
        self.released: list[Lease] = []
        """the lease records that accepted appends let go"""
        self.assumed_new: set[str] = set()
        """sessions assumed to have no index entry yet (their first append is here)"""
        self.seals: list[ContentSeal | None] | None = []
        """the content seals of `columns`' events, in the same order (None when an append
        came without them: then the batch is not sealed in its own transaction)"""
        self.base_hashes: dict[str, bytes] = {}
        """session -> the hash of its record at the assumed version, where known"""
        self.placed: dict[SealKey, tuple[int, bytes, bytes]] = {}
        """(session, version) -> (position, previous session hash, previous log hash), when
        the batch was sealed in its own transaction"""


class AppendWriter:
    """Group commit by leaders: a caller whose request is waiting becomes a leader if fewer
    than `writers` are writing, takes every waiting request (its own and others') and commits
    them in one transaction on its own thread; the others wait for their answer. No hand-off
    to another thread when nobody else is appending. `write` is called from any thread."""

    def __init__(self, pool: Pool, pipeline: StatementPipeline, sealer: Sealer, *,
                 wait_for_seal: bool, max_batch: int, reconnect_timeout: float,
                 writers: int = 1, seal_inline: bool = True,
                 policy: BatchPolicy | None = None) -> None:
        self._pool = pool
        self._pipeline = pipeline
        """The connection every batch's call goes down, without waiting for the batch before
        it (`APPEND_BATCH`, prepared there); the pool serves the slow path."""
        self._sealer = sealer
        self._seal_inline = seal_inline
        self._head: Head | None = None
        """The sealed head as this writer last saw it (an assumption the server checks)."""
        sealer.on_placed = self.learn_seal
        self._wait_for_seal = wait_for_seal
        self._max_batch = max_batch
        self._reconnect_timeout = reconnect_timeout
        self._max_leaders = max(writers, 1)
        self._leaders = 0
        self._waiting: collections.deque[_Request] = collections.deque()
        self._lock = threading.Lock()
        self._callers = 0
        """How many callers are in `write`."""
        self._watching = 0
        """How many threads wait on `_arrivals`."""
        self._arrivals = threading.Condition(self._lock)
        """Notified, while someone watches, when a request comes to wait or a caller leaves
        (`_gather`, `wait_queued`)."""
        self.policy = policy if policy is not None else BatchPolicy()
        """Whether a lone node's leaders gather too (`batching.py`)."""
        self.gather_wait = GATHER_WAIT
        """How long a leader gathers at most (tests lengthen it)."""
        self._sleeping: collections.deque[_Request] = collections.deque()
        """Callers waiting for a leader's place."""
        self._idle = threading.Condition(self._lock)
        """Notified when nothing is being written or waiting (for close), and when a batch in
        flight lands while a batch waits for its sessions."""
        self._in_flight = 0
        """How many batches were sent down the pipeline and are not answered yet."""
        self._flying = 0
        """How many requests those batches hold."""
        self._flights: dict[str, int] = {}
        """session -> how many batches in flight write it: a later batch for the session waits
        until none does, so that it is decided on what they wrote (`_idle` says when)."""
        self._flight_waiters = 0
        """How many batches wait for their sessions to land (`_land` notifies them)."""
        self.fault: Callable[[str, psycopg.Connection[Any]], None] | None = None
        """Tests only: called with "before_commit" and "after_commit" in the transaction."""
        self._commits = itertools.count(1)
        self.commits = 0
        """How many transactions the writers committed."""
        self.slow_batches = 0
        """How many batches found the assumed state stale and were written again from the
        state read under the locks."""
        self.sealed_batches = 0
        """How many batches were sealed in their own transaction."""
        self.locked_seals = 0
        """How many of those waited for the seal row (`_seal_under_lock`), not sealed in the
        batch's call."""
        self._known: collections.OrderedDict[str, tuple[int, SessionInfo]] = (
            collections.OrderedDict())
        self._hashes: collections.OrderedDict[str, tuple[int, bytes]] = (
            collections.OrderedDict())
        """session -> (version, hash) of its last sealed record, as last seen here"""
        self._known_lock = threading.Lock()
        self._sealing = threading.Lock()
        """Held by the leader sealing for everyone."""
        self._last_sealed: Head | None = None
        """The head this writer's last seal left."""
        self._contended = False
        """Another node seals too (the head moved since this writer's last seal): batches go
        straight to a transaction that waits for the seal row, instead of a call that would
        find the head moved, with the leader's place held meanwhile, and the next leader
        gathers the callers the batch answers (`_gather`): each batch is one turn at the seal
        row, which the nodes take one after the other, so the fewer the turns the better.
        Read and set without a lock: it only picks the faster way, and either way is
        correct."""

    def write(self, appends: list[EncodedAppend], timeout: float) -> list[list[Recorded]]:
        """Append all or nothing; one list of records per append. Blocks the calling thread
        (which may commit other callers' appends as well) up to `timeout` seconds."""
        request = _Request(appends)
        entered = time.monotonic()
        with self._lock:
            self._waiting.append(request)
            self._callers += 1
            if self._watching:
                self._arrivals.notify_all()
        try:
            return self._written(request, timeout)
        finally:
            left = time.monotonic()
            with self._lock:
                self._callers -= 1
                self.policy.record(left - entered, left)
                if self._watching:  # one fewer to gather
                    self._arrivals.notify_all()

    def _written(self, request: _Request, timeout: float) -> list[list[Recorded]]:
        """`write` once the request waits: lead or sleep until it is answered."""
        while True:
            with self._lock:
                if request.taken:
                    break
                leading = self._leaders < self._max_leaders
                if leading:
                    self._leaders += 1
                else:
                    self._sleeping.append(request)
            if not leading:
                # Woken when a leader's place is free for us, or when our answer is ready.
                request.sleep(timeout)
                continue
            answer: Callable[[], None] | None = None
            place = _LeaderPlace(self._hand_over)
            try:
                # Room in the pipeline first: the batch then takes everyone who came meanwhile.
                self._pipeline.wait_for_room(PIPELINE_TIMEOUT)
                if self._contended or self.policy.gathering:
                    self._gather()
                batch = self._take_waiting()
                if batch:
                    answer = self._write_batch(batch, place)
            finally:
                place.give_up()
            if answer is not None:  # after the hand-over: the next batch is on its way
                answer()
            self._seal_waiting()
        return request.result(timeout)

    def _gather(self) -> None:
        """While another node seals too, or while the policy says so: wait, `gather_wait`
        seconds at most, until every caller in `write` whose request is not in flight waits
        to be written (those the batch before answered come back meanwhile, or leave), so
        that this batch takes them all."""
        self._watch(lambda: len(self._waiting) >= min(self._callers - self._flying,
                                                      self._max_batch), self.gather_wait,
                    # what the policy weighs: a lone node's gathering, not the nodes' turns
                    waiting=None if self._contended else self.policy.note_wait)

    def wait_queued(self, count: int, timeout: float) -> bool:
        """Whether `count` requests or more wait to be written within `timeout` seconds (for
        tests that line callers up behind a batch)."""
        return self._watch(lambda: len(self._waiting) >= count, timeout)

    def _watch(self, condition: Callable[[], bool], timeout: float,
               waiting: Callable[[], None] | None = None) -> bool:
        """Wait on `_arrivals` until `condition` (checked under the lock) holds or `timeout`
        seconds have passed; whether it holds. `waiting` is called (under the lock) if it
        does not hold at first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if condition():
                return True
            if waiting is not None:
                waiting()
            self._watching += 1
            try:
                while not condition():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._arrivals.wait(remaining)
                return True
            finally:
                self._watching -= 1

    def _take_waiting(self) -> list[_Request]:
        """A leader takes the requests waiting (up to `max_batch`) into its batch."""
        batch: list[_Request] = []
        with self._lock:
            while self._waiting and len(batch) < self._max_batch:
                taken = self._waiting.popleft()
                taken.taken = True
                batch.append(taken)
        return batch

    @property
    def leaders(self) -> int:
        """How many batches may be written at once (`writers`)."""
        return self._max_leaders

    def queued(self) -> int:
        """How many callers' requests wait for a leader to take them."""
        with self._lock:
            return len(self._waiting)

    def _hand_over(self) -> None:
        """A leader is done: wake one caller still waiting to be written (no thundering
        herd), or tell `close` that all is quiet."""
        with self._lock:
            self._leaders -= 1
            while self._sleeping:
                sleeper = self._sleeping.popleft()
                if not sleeper.taken:
                    sleeper.wake()
                    break
            if not self._leaders and not self._waiting and not self._in_flight:
                self._idle.notify_all()

    def close(self, timeout: float = 60.0) -> None:
        """Wait (up to `timeout` seconds) until no append is being written or waiting, then
        close the pipeline's connection."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while (self._leaders or self._waiting or self._in_flight) and \
                    time.monotonic() < deadline:
                self._idle.wait(0.1)
        self._pipeline.close()

    def _write_batch(self, batch: list[_Request], place: _LeaderPlace
                     ) -> Callable[[], None] | None:
        try:
            return self._write(batch, place)
        except BaseException as error:  # never leave a caller waiting
            for request in batch:
                if not request.done():
                    request.set_exception(error)
            raise

    def _write(self, batch: list[_Request], place: _LeaderPlace) -> Callable[[], None] | None:
        """Write one batch, retrying a lost connection until `reconnect_timeout`; an
        interrupted commit is resolved by re-reading before anything is tried again. Returns
        what answers the batch's callers, once the leader's place is handed over (None when
        they are answered already)."""
        deadline = time.monotonic() + self._reconnect_timeout
        pause = 0.05
        duplicates = 0
        while True:
            state: dict[str, Any] = {"sent_commit": False}
            try:
                txid, outcome = self._transaction(batch, state, place)
                return lambda: self._answer(batch, txid, outcome)
            except pg_errors.UniqueViolation:
                # Someone wrote without the session locks (the next try sees their rows), or
                # the session index lags behind the events (it needs a rebuild).
                duplicates += 1
                if duplicates < 3:
                    continue
                self._fail(batch, LedgerError(
                    "an append's (session, version) is taken although the session index says "
                    "it is free: run `chatledger verify`, then `chatledger rebuild`"))
                return None
            except (psycopg.OperationalError, ConnectionLostError) as error:
                logger.warning("chatledger writer: %s", describe(error))
                if state["sent_commit"]:
                    # Whether it was sealed in its transaction is not known: answer as the
                    # sealer finds the rows.
                    state["outcome"].placed = {}
                    resolved = self._resolve(state["outcome"], deadline)
                    if resolved is None:
                        self._fail(batch, AppendOutcomeUnknownError(
                            "lost the connection to PostgreSQL while an append committed: "
                            "read the session's version before appending again"))
                        return None
                    if resolved is not False:
                        self._answer(batch, resolved, state["outcome"])
                        return None
            if time.monotonic() + pause > deadline:
                self._fail(batch, ConnectionLostError(
                    "cannot reach PostgreSQL to append; nothing was written"))
                return None
            time.sleep(pause)  # a bounded back-off between reconnection attempts
            pause = min(pause * 2, 1.0)

    def _resolve(self, outcome: _Batch, deadline: float) -> int | bool | None:
        """Whether an interrupted commit happened (its txid, or False), asking until the
        deadline; None if the server never answered."""
        pause = 0.05
        while True:
            resolved = self._committed(outcome)
            if resolved is not None or time.monotonic() + pause > deadline:
                return resolved
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    @staticmethod
    def _fail(batch: list[_Request], error: LedgerError) -> None:
        for request in batch:
            if not request.done():
                request.set_exception(error)

    def _transaction(self, batch: list[_Request], state: dict[str, Any], place: _LeaderPlace
                     ) -> tuple[int | None, _Batch]:
        self._wait_for_flights(batch)
        assumed = self._assume(batch)
        if assumed is not None and not self._contended:
            done = self._in_one_call(batch, assumed, state, place)
            if done is not None:
                return done
            self.slow_batches += 1
        with self._pool.connection() as connection:
            try:
                return self._in_transaction(connection, batch, state)
            except psycopg.Error:
                if not connection.closed:
                    connection.rollback()
                raise

    def _wait_for_flights(self, batch: list[_Request]) -> None:
        """Wait until no batch in flight writes any of this batch's sessions."""
        sessions = {append.session_id for request in batch for append in request.appends}
        deadline = time.monotonic() + self._reconnect_timeout + PIPELINE_TIMEOUT
        with self._lock:
            while not sessions.isdisjoint(self._flights) and time.monotonic() < deadline:
                self._flight_waiters += 1
                try:
                    self._idle.wait(0.1)
                finally:
                    self._flight_waiters -= 1

    def _assume(self, batch: list[_Request]) -> _Batch | None:
        """The state this batch's sessions are assumed to be in: the last version and info
        this node saw for each (or none, for a session created by its first append here),
        and the lease each fenced session's first append holds; None when a session's info
        at its expected version is unknown here (another node appended, or this node has
        not seen it since it started)."""
        outcome = _Batch(len(batch))
        with self._known_lock:
            for request in batch:
                for append in request.appends:
                    session_id = append.session_id
                    if append.lease is not None and session_id not in outcome.leases:
                        outcome.leases[session_id] = append.lease
                    if session_id in outcome.index:
                        continue
                    known = self._known.get(session_id)
                    if known is not None:
                        outcome.index[session_id] = known
                        last = self._hashes.get(session_id)
                        if last is not None and last[0] == known[0]:
                            outcome.base_hashes[session_id] = last[1]
                    elif append.expected_version != 0:
                        return None
                    else:
                        outcome.assumed_new.add(session_id)
        return outcome

    def _remember(self, index: dict[str, tuple[int, SessionInfo]],
                  hashes: dict[str, tuple[int, bytes]] | None = None) -> None:
        """Keep sessions' (version, info) as read or written, and the hash of their last
        sealed record; a version's info and a sealed record's hash never change, so the
        highest version seen is always right to assume (until another node appends)."""
        with self._known_lock:
            for session_id, entry in index.items():
                known = self._known.get(session_id)
                if known is None or known[0] <= entry[0]:
                    self._known[session_id] = entry
                    self._known.move_to_end(session_id)
            while len(self._known) > KNOWN_SESSIONS:
                self._known.popitem(last=False)
            if hashes:
                self._keep_hashes(hashes)

    def _keep_hashes(self, hashes: dict[str, tuple[int, bytes]]) -> None:
        for session_id, last in hashes.items():
            known = self._hashes.get(session_id)
            if known is None or known[0] <= last[0]:
                self._hashes[session_id] = last
                self._hashes.move_to_end(session_id)
        while len(self._hashes) > KNOWN_SESSIONS:
            self._hashes.popitem(last=False)

    def learn_seal(self, head: Head, hashes: dict[SealKey, bytes]) -> None:
        """Take in a seal made elsewhere (the sealer, another call): the head it left and the
        hashes of the records it placed. Only ever moves the assumed head forward."""
        with self._known_lock:
            if self._head is None or head.position > self._head.position:
                self._head = head
            self._keep_hashes({session_id: (version, digest)
                               for (session_id, version), digest in hashes.items()})

    def _in_one_call(self, batch: list[_Request], outcome: _Batch, state: dict[str, Any],
                     place: _LeaderPlace) -> tuple[int | None, _Batch] | None:
        """The batch decided on the assumed state and written by one call of
        `chatledger.append_batch_sealed` down the pipeline: one transaction, which writes
        only if the assumed state is the stored one. The leader's place is given up once the
        call is sent, so the next batch is prepared and sent while this one runs, and sealed
        for the head this one leaves if this one seals. None if the assumed state was not the
        stored one (nothing was written)."""
        session_ids = sorted(outcome.index.keys() | outcome.assumed_new)
        bases = [outcome.index[session_id][0] if session_id in outcome.index else 0
                 for session_id in session_ids]
        keys = sorted({session_lock_key(session_id) for session_id in session_ids})
        fenced = sorted(outcome.leases)
        owners = [outcome.leases[session_id].owner for session_id in fenced]
        assumed_leases: list[list[Any]] = [
            fenced, [outcome.leases[session_id].epoch for session_id in fenced],
            [owner.host if owner is not None else None for owner in owners],
            [owner.pid if owner is not None else None for owner in owners],
            [owner.started_at if owner is not None else None for owner in owners],
            [owner.token if owner is not None else None for owner in owners],
        ]
        base_hashes = [outcome.base_hashes.get(session_id) for session_id in session_ids]
        touched = self._decide(batch, outcome)
        with self._known_lock:
            assumed_head = self._head
        head, hashes, records = self._seal_columns(outcome, assumed_head)
        if head is None and self._seal_inline and outcome.seals:
            return None  # the head or a last hash is not known here: seal under the lock
        state["outcome"] = outcome
        if self.fault is not None:
            self.fault("before_commit", self._pipeline.connection())
        arrays: list[Sequence[Any]] = [
            keys, session_ids, bases, base_hashes, *assumed_leases, *outcome.columns,
            *self._index_columns(outcome, touched), *lease_columns(outcome.released)]
        params = [*(encode(array) for encode, array in zip(_BATCH_ARRAYS, arrays, strict=True)),
                  _INT8.pack(head.position) if head is not None else None,
                  head.hash if head is not None else None,
                  bytea_array(hashes), bytea_array(records), SEAL_CHANNEL.encode()]
        state["sent_commit"] = True
        call = self._pipeline.send(params, PIPELINE_TIMEOUT)
        predicted = (Head(head.position + len(hashes), hashes[-1])
                     if head is not None and hashes else None)
        self._take_off(session_ids, len(batch), head, predicted)
        place.give_up()
        try:
            row = self._pipeline.wait(call, PIPELINE_TIMEOUT)
            sealed = row[1] == b"t"
            if predicted is not None and not sealed:
                self._forget_head()
            if row[0] != b"t":
                state["sent_commit"] = False
                if head is not None:  # it was to seal: the head moved, or a session did
                    self._contended = True
                return None
            if self.fault is not None:
                self.fault("after_commit", self._pipeline.connection())
            if touched or outcome.released:
                self.commits = next(self._commits)
            last_hashes: dict[str, tuple[int, bytes]] = {}
            if sealed:
                assert predicted is not None
                self.sealed_batches += 1
                last_hashes = _last_hashes(outcome, hashes)
                self.learn_seal(predicted, {})  # the hashes go in with the index entries
                self._last_sealed = predicted
                self._sealer.placed_inline(predicted)
            else:
                outcome.placed = {}
            self._remember({session_id: outcome.index[session_id] for session_id in touched},
                           last_hashes)
            return (int(row[2]) if row[2] is not None and touched else None), outcome
        except BaseException:
            if predicted is not None:
                self._forget_head()
            raise
        finally:
            self._land(session_ids, len(batch))

    def _take_off(self, session_ids: list[str], requests: int, head: Head | None,
                  predicted: Head | None) -> None:
        """A batch was sent: its sessions are in flight, and if it is sealed for `head`, the
        next batch assumes the head it leaves (`predicted`)."""
        if predicted is not None:
            with self._known_lock:
                if self._head == head:
                    self._head = predicted
        with self._lock:
            for session_id in session_ids:
                self._flights[session_id] = self._flights.get(session_id, 0) + 1
            self._in_flight += 1
            self._flying += requests

    def _land(self, session_ids: list[str], requests: int) -> None:
        """A batch in flight was answered (or failed): its sessions are free again."""
        with self._lock:
            for session_id in session_ids:
                left = self._flights[session_id] - 1
                if left:
                    self._flights[session_id] = left
                else:
                    del self._flights[session_id]
            self._in_flight -= 1
            self._flying -= requests
            if self._flight_waiters or not (self._leaders or self._waiting or self._in_flight):
                self._idle.notify_all()

    def _forget_head(self) -> None:
        """A batch sealed for a predicted head was not sealed: the batches after it assumed
        a head that is not there. Assume none until the sealer says which it is (it will:
        the batch left rows unsealed, or wrote none and the slow path writes them)."""
        with self._known_lock:
            self._head = None

    def _seal_columns(self, outcome: _Batch, head: Head | None
                      ) -> tuple[Head | None, list[bytes], list[bytes]]:
        """The batch's records sealed for `head` (the one this writer assumes, or the one
        under the seal row's lock), to be stored in the append's own transaction: (that head,
        each event's hash, each stored record), exactly as the sealer would have made them,
        or (None, [], []) when they cannot be made here (no head known, or a session's last
        hash unknown)."""
        if not self._seal_inline or head is None or not outcome.seals:
            return None, [], []
        sessions, versions, times, schema_versions, encoded = outcome.columns
        last: dict[str, bytes] = {}
        for session_id, version in zip(sessions, versions, strict=True):
            if session_id in last:
                continue
            if version == 1:
                last[session_id] = GENESIS
            elif session_id in outcome.base_hashes:
                last[session_id] = outcome.base_hashes[session_id]
            else:
                return None, [], []
        position, log_hash = head.position, head.hash
        hashes: list[bytes] = []
        records: list[bytes] = []
        for session_id, version, recorded_at, schema_version, data, seal in zip(
                sessions, versions, times, schema_versions, encoded, outcome.seals, strict=True):
            position += 1
            session_hash = last[session_id]
            record, digest = stored_record(position, session_id, version, recorded_at,
                                           session_hash, log_hash, data, seal, schema_version)
            outcome.placed[(session_id, version)] = (position, session_hash, log_hash)
            last[session_id] = log_hash = digest
            hashes.append(digest)
            records.append(record)
        return head, hashes, records

    @staticmethod
    def _index_columns(outcome: _Batch, touched: list[str]) -> tuple[list[Any], ...]:
        """The session index rows the batch upserts: session, version, encoded info."""
        upsert: tuple[list[Any], ...] = ([], [], [])
        for session_id in touched:
            version, info = outcome.index[session_id]
            upsert[0].append(session_id)
            upsert[1].append(version)
            upsert[2].append(encode_info(info))
        return upsert

    def _in_transaction(self, connection: psycopg.Connection[Any], batch: list[_Request],
                        state: dict[str, Any], *, seal: bool = True
                        ) -> tuple[int | None, _Batch]:
        """The batch decided on the state read under the sessions' locks, in one transaction
        of a few statements, and sealed there under the seal row's lock when it can be (or,
        with `seal` false, left to the sealer): for sessions this node knows nothing about,
        whose state another node changed, or a batch that could not seal in its call."""
        session_ids = sorted({append.session_id for request in batch
                              for append in request.appends})
        keys = sorted({session_lock_key(session_id) for session_id in session_ids})
        fenced = sorted({append.session_id for request in batch for append in request.appends
                         if append.lease is not None})
        # Plain statements, not pipeline mode: psycopg's pipeline costs far more CPU per round
        # trip than the round trips it saves on a local network (measured again with two
        # nodes: 15 % fewer appends). The arrays go in binary, encoded here: psycopg's list
        # dumper took ~0.7 ms of a batch, while the seal row was held.
        connection.execute(_LOCK, [SESSION_LOCK_CLASS, int4_array(keys)])
        versions = connection.execute(_VERSIONS, [text_array(session_ids)], binary=True)
        rows = versions.fetchall()
        outcome = _Batch(len(batch))
        if fenced:
            outcome.leases = leases.read(connection, fenced)
        last_hashes: dict[str, tuple[int, bytes]] = {}
        for session_id, version, info, last_hash in rows:
            outcome.index[session_id] = (int(version), msgspec.msgpack.decode(
                bytes(info), type=SessionInfo))
            if last_hash is not None:
                last_hashes[session_id] = (int(version), bytes(last_hash))
        self._remember(outcome.index, last_hashes)
        outcome.base_hashes = {session_id: digest for session_id, (_, digest)
                               in last_hashes.items()}
        touched = self._decide(batch, outcome)
        if not touched and not outcome.released:
            connection.rollback()
            return None, outcome
        state["outcome"] = outcome
        leases.write(connection, outcome.released)
        try:
            sealed = (self._seal_under_lock(connection, outcome, touched)
                      if touched and seal else None)
            if sealed is not None:
                write, params = SEALED_WRITE, sealed[2]
            elif touched:
                write, params = _WRITE, [encode(column) for encode, column in zip(
                    _WRITE_ARRAYS, (*outcome.columns, *self._index_columns(outcome, touched)),
                    strict=True)]
            else:  # only leases were let go: nothing to seal
                write, params = None, []
            if self.fault is not None:
                self.fault("before_commit", connection)
            state["sent_commit"] = True
            cursor = connection.execute(write, params) if write is not None else None
            connection.commit()
        except pg_errors.LockNotAvailable:  # waited past SEAL_ROW_WAIT: leave it to the sealer
            connection.rollback()
            state["sent_commit"] = False
            return self._in_transaction(connection, batch, state, seal=False)
        if self.fault is not None:
            self.fault("after_commit", connection)
        self.commits = next(self._commits)
        self._remember({session_id: outcome.index[session_id] for session_id in touched},
                       sealed[1] if sealed is not None else None)
        if sealed is not None:
            self.sealed_batches += 1
            self.locked_seals += 1
            self._last_sealed = sealed[0]
            self.learn_seal(sealed[0], {})
            self._sealer.placed_inline(sealed[0])
            return None, outcome
        if cursor is None:
            return None, outcome
        txid_row = cursor.fetchone()
        assert txid_row is not None
        return int(txid_row[0]), outcome

    def _seal_under_lock(self, connection: psycopg.Connection[Any], outcome: _Batch,
                         touched: list[str]
                         ) -> tuple[Head, dict[str, tuple[int, bytes]], list[Any]] | None:
        """Seal the batch in the slow path's transaction, waiting for the seal row (another
        node's batch, the sealer or an import holds it for one commit; LockNotAvailable past
        SEAL_ROW_WAIT, so that a holder that stopped cannot stop every append): its rows are
        made sealed for the head found there. Returns (the new head, each session's last
        (version, hash), the parameters of SEALED_WRITE, which writes the rows, the index
        entries and the new head), or None when it cannot seal here, and the rows go in
        unsealed: a committed row waits for the sealer (then the row is not taken), or a
        session's last hash is unknown."""
        if not self._seal_inline or not outcome.seals:
            return None
        row = connection.execute(_LOCK_SEAL).fetchone()
        if row is None:  # rows wait for the sealer (or the seal row is gone: the sealer says)
            return None
        found = Head(int(row[0]), bytes(row[1]))
        self._contended = found != self._last_sealed
        head, hashes, records = self._seal_columns(outcome, found)
        if head is None or not hashes:
            return None
        sessions, versions, times, schema_versions, _ = outcome.columns
        positions = [outcome.placed[key][0] for key in zip(sessions, versions, strict=True)]
        last = _last_hashes(outcome, hashes)
        index = self._index_columns(outcome, touched)
        new_head = Head(positions[-1], hashes[-1])
        index_positions = [outcome.placed[(session_id, last[session_id][0])][0]
                           for session_id in index[0]]
        return new_head, last, [
            *(encode(column) for encode, column in zip(_SEALED_WRITE_ARRAYS, (
                sessions, versions, times, schema_versions, positions, hashes, records,
                *index, index_positions), strict=True)),
            new_head.position, new_head.hash, SEAL_CHANNEL, str(new_head.position)]

    @staticmethod
    def _decide(batch: list[_Request], outcome: _Batch) -> list[str]:
        """Check each request's expected versions in order, build its records and rows;
        returns the sessions whose index entry changes."""
        touched: dict[str, None] = {}
        now = datetime.now(timezone.utc)
        for number, request in enumerate(batch):
            conflict: ConcurrencyError | StaleLeaseError | None = None
            for append in request.appends:
                current = outcome.index.get(append.session_id, (0, None))[0]
                if append.lease is not None and not fences(
                        outcome.leases.get(append.session_id), append.lease):
                    conflict = StaleLeaseError(append.session_id, append.lease.epoch)
                    break
                if current != append.expected_version:
                    conflict = ConcurrencyError(append.session_id, append.expected_version,
                                                current)
                    break
            if conflict is not None:
                outcome.answers[number] = conflict
                continue
            lists: list[list[Recorded]] = []
            for append in request.appends:
                if append.release_lease and append.lease is not None:
                    freed = released(outcome.leases.get(append.session_id), append.lease)
                    if freed is not None:
                        outcome.released.append(freed)
                        outcome.leases[append.session_id] = freed
                if not append.events:
                    lists.append([])
                    continue
                version, info = outcome.index.get(
                    append.session_id, (0, SessionInfo(session_id=append.session_id)))
                times = append.recorded_at or [now] * len(append.events)
                records: list[Recorded] = []
                for event, encoded, recorded_at in zip(append.events, append.encoded, times,
                                                       strict=True):
                    version += 1
                    recorded = Recorded(
                        position=0, session_id=append.session_id, version=version,
                        recorded_at=recorded_at, schema_version=SCHEMA_VERSION,
                        prev_session_hash=GENESIS, prev_log_hash=GENESIS, event=event,
                    )
                    info = evolve(info, recorded)
                    records.append(recorded)
                    for column, value in zip(outcome.columns, (
                            append.session_id, version, recorded_at, SCHEMA_VERSION, encoded),
                            strict=True):
                        column.append(value)
                if append.seals is None:
                    outcome.seals = None
                elif outcome.seals is not None:
                    outcome.seals.extend(append.seals)
                outcome.first_rows.append((append.session_id, records[0].version,
                                           records[0].recorded_at, append.encoded[0]))
                outcome.index[append.session_id] = (version, info)
                touched[append.session_id] = None
                lists.append(records)
            outcome.answers[number] = lists
        return list(touched)

    def _committed(self, outcome: _Batch) -> int | bool | None:
        """After a lost connection: the txid if our rows are there (committed), False if they
        are not, None if the server cannot tell us yet."""
        keys = outcome.first_rows
        try:
            with self._pool.connection() as connection:
                rows = connection.execute(_FIND, [[key[0] for key in keys],
                                                  [key[1] for key in keys]],
                                          binary=True).fetchall()
                connection.rollback()
        except (psycopg.Error, LedgerError):
            return None
        found = {(row[0], int(row[1])): row for row in rows}
        txids = set()
        for session_id, version, recorded_at, encoded in keys:
            row = found.get((session_id, version))
            if row is None:
                return False
            stored_event = (bytes(row[4]) if row[4] is not None
                            else bytes(decode_envelope(bytes(row[5])).event))
            if stored_event != encoded or row[3] != recorded_at:
                return False  # another writer's rows: ours did not commit
            txids.add(int(row[2]))
        return txids.pop() if len(txids) == 1 else False

    def _answer(self, batch: list[_Request], txid: int | None, outcome: _Batch) -> None:
        """Answer each request, or, with `wait_for_seal`, hand its answer to the sealer to
        complete once sealed (`_seal_waiting` then seals)."""
        if outcome.placed:  # sealed in the append's own transaction
            answered: list[_Request] = []
            for request, answer in zip(batch, outcome.answers, strict=True):
                if isinstance(answer, (ConcurrencyError, StaleLeaseError)):
                    request.set_exception(answer)
                elif answer is not None:
                    request.settle([[with_seal(recorded, *outcome.placed[
                        (recorded.session_id, recorded.version)]) for recorded in records]
                        for records in answer])
                    answered.append(request)
            answer_in_turn(answered)
            return
        for request, answer in zip(batch, outcome.answers, strict=True):
            if isinstance(answer, (ConcurrencyError, StaleLeaseError)):
                request.set_exception(answer)
            elif answer is not None:
                if txid is not None and self._wait_for_seal:
                    self._sealer.expect(txid, request, answer, wake=False)
                else:
                    request.set_result(answer)
        if txid is not None and not self._wait_for_seal:
            self._sealer.wake()  # answered at commit: the sealer thread seals soon after

    def _seal_waiting(self) -> None:
        """After its commit, and after giving up its leader's place (so that the next batch
        commits meanwhile), a leader seals for every append waiting for its seal, unless
        another leader is sealing already: that one seals again when it is done, as long as
        appends wait and its seals place rows. What is left goes to the sealer thread."""
        for _ in range(SEALS_PER_LEADER):
            if not self._sealer.waiting() or not self._sealing.acquire(blocking=False):
                return
            try:
                before = self._sealer.waiting_count()
                self._sealer.seal_now()
                if self._sealer.waiting_count() >= before:
                    break  # an older transaction holds the horizon back
            except (LedgerError, psycopg.Error) as error:
                logger.warning("chatledger writer: sealing failed: %s", describe(error))
                break
            finally:
                self._sealing.release()
        if self._sealer.waiting():
            self._sealer.wake()
