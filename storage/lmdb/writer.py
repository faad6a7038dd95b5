"""Group commit: one writer per ledger in a process, through which every LMDB write goes.

Callers hand in requests and wait; the writer thread takes whatever is waiting, applies it
in one write transaction (one fsync for many events), commits, and answers each caller with
its own result or its own error. A caller (other than the main thread) that finds the
writer idle (nothing queued, no batch taken, no commit running) commits its own request on
its own thread instead, in the same way: a lone append (a warm turn's) saves the two thread
hand-offs. Write transactions run one at a time, in the order their requests arrived. A
write transaction never spans anything slow: requests arrive encoded, and callers are woken
only after the commit.
"""

from __future__ import annotations

import collections
import shutil
import threading
from collections.abc import Callable
from typing import Any

import lmdb

from ...errors import LedgerClosedError, LedgerError, LedgerFullError
from ...telemetry.otel import record_group_commit
from .environment import SharedEnvironment

MAX_BATCH_REQUESTS = 512
COMMIT_LINGER = 0.0005
"""Seconds the writer may wait for callers of the previous batch to come back (see _run)."""
IDLE_SECONDS = 0.1
"""After this long without requests the writer wakes any caller a broken chain left asleep."""
DISK_FULL_MARGIN = 1024 * 1024
"""Free bytes under which a failed commit is taken for a full disk."""

BatchApply = Callable[[Any, list["WriteRequest"]], list[Any]]
"""Applies a batch inside one write txn; returns one result (or exception) per request."""


class WriteRequest:
    """One caller's unit of work for the writer, and the latch its caller waits on.

    The latch is a bare lock, held from creation until the request is answered: the cheapest
    one-shot wake-up CPython has (a `concurrent.futures.Future` costs a Condition, its lock
    and a waiter lock per request, which shows in group-commit profiles).

    The writer wakes only the first caller of a batch, and each caller wakes the next as it
    wakes up. Under the GIL the callers run one at a time anyway; waking them all at once
    sent every one of them to queue for the GIL, a futex storm that cost more CPU than the
    commit (16 concurrent sessions: 15k -> 17.5k appends/s, see benchmarks/README.md).
    """

    __slots__ = ("payload", "_latch", "_answered", "_result", "_error", "_next")

    def __init__(self, payload: Any) -> None:
        self.payload = payload
        self._latch = threading.Lock()
        self._latch.acquire()
        self._answered = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._next: WriteRequest | None = None

    def result(self) -> Any:
        """Block until answered and wake the next caller of the batch; the result, or raise."""
        try:
            self._latch.acquire()
        finally:
            # Even when a signal interrupted the wait: the batch's results are all set
            # once a request is linked to the next, so its caller may wake.
            if self._next is not None:
                _wake(self._next)
        if self._error is not None:
            raise self._error
        return self._result


_MAIN = threading.main_thread()

_HANDOFF = threading.Lock()
"""Makes waking a caller once-only, whoever does it (the caller before it, or the writer)."""


def _wake(request: WriteRequest) -> None:
    """Release a caller's latch unless it has been released already."""
    with _HANDOFF:
        if request._answered:
            return
        request._answered = True
    request._latch.release()  # outside the lock, which the woken caller takes next


def answer(batch: list[WriteRequest], outcomes: list[Any]) -> None:
    """Set every outcome of a batch (an exception is raised to its caller), chain the requests
    and wake the first caller, who wakes the next. Writer thread, once per batch."""
    previous: WriteRequest | None = None
    for request, outcome in zip(batch, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            request._error = outcome
        else:
            request._result = outcome
        if previous is not None:
            previous._next = request
        previous = request
    _wake(batch[0])


def wake_stragglers(batch: list[WriteRequest]) -> None:
    """Wake every caller of an answered batch that is still asleep (a chain is broken only
    when a signal interrupted a caller between its wake-up and passing it on). The chain
    wakes callers in order, so once its last caller is awake there is nothing to do."""
    if batch[-1]._answered:
        return
    for request in batch:
        _wake(request)


class _Inbox:
    """The writer's queue: callers add requests, the writer takes them all at once.

    The writer says how many requests it waits for, and only the caller that makes the count
    rings it, so a writer lingering for a batch of sixteen wakes once, not sixteen times.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[WriteRequest | None] = []
        self._wanted = 0  # 0: the writer is not waiting
        self._taken = False  # the writer took requests and has not committed them yet
        self._bell = threading.Lock()
        self._bell.acquire()

    def put(self, item: WriteRequest | None) -> None:
        """Add a request (None: stop), ringing the writer if it waits for this many."""
        with self._lock:
            self._items.append(item)
            ring = bool(self._wanted) and (len(self._items) >= self._wanted or item is None)
            if ring:
                self._wanted = 0
        if ring:  # outside the lock, which the writer takes as it wakes
            self._bell.release()

    def __len__(self) -> int:
        return len(self._items)

    def claim_idle(self, token: threading.Lock) -> bool:
        """Take the commit `token` if nothing waits and the writer took nothing (a caller
        may then commit its own request); whether it was taken. Never blocks."""
        with self._lock:
            return not self._items and not self._taken and token.acquire(blocking=False)

    def committed(self) -> None:
        """The writer committed (or failed) what it took."""
        with self._lock:
            self._taken = False

    def take(self, wanted: int, timeout: float | None, limit: int) -> list[WriteRequest | None]:
        """Up to `limit` items once there are `wanted` (or a stop), or whatever there is
        after `timeout` seconds (None: wait for ever)."""
        with self._lock:
            if len(self._items) < wanted and None not in self._items:
                self._wanted = wanted
                self._lock.release()
                try:
                    rung = self._bell.acquire(timeout=-1 if timeout is None else timeout)
                finally:
                    self._lock.acquire()
                if not rung:
                    if self._wanted:  # nobody rang
                        self._wanted = 0
                    else:  # rung just after the timeout: the ring is on its way, take it
                        self._bell.acquire()
            items, self._items = self._items[:limit], self._items[limit:]
            self._taken = self._taken or bool(items)
            return items


class GroupCommitWriter:
    """The single writer thread of one ledger environment in this process."""

    def __init__(
        self,
        shared: SharedEnvironment,
        apply_batch: BatchApply,
        on_commit: Callable[[], None],
    ) -> None:
        self._shared = shared
        self._apply_batch = apply_batch
        self._on_commit = on_commit
        self._inbox = _Inbox()
        self._closed = False
        self._lock = threading.Lock()
        self._token = threading.Lock()
        """Held by whoever runs a write transaction: the writer thread or an idle caller."""
        self.batches_committed = 0
        self._thread = threading.Thread(
            target=self._run, name=f"chatledger-writer:{shared.path.name}", daemon=True
        )
        self._thread.start()

    def submit(self, payload: Any, *, here_if_idle: bool = True) -> Any:
        """Queue a request and block until the writer committed it (or failed it); with the
        writer idle (and `here_if_idle`), commit it on this thread instead."""
        request = WriteRequest(payload)
        with self._lock:
            if self._closed:
                raise LedgerClosedError("the ledger is closed")
            # Not on the main thread, where a signal's exception could land between the
            # commit and its answer: it waits for the writer, as before.
            alone = here_if_idle and threading.current_thread() is not _MAIN \
                and self._inbox.claim_idle(self._token)
            if not alone:
                self._inbox.put(request)
        if alone:
            try:
                self._commit([request])
            finally:
                self._token.release()
        return request.result()

    def queued(self) -> int:
        """How many requests wait for the writer now."""
        return len(self._inbox)

    def close(self) -> None:
        """Finish what is queued, then stop the writer thread (blocks until it has)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._inbox.put(None)
        self._thread.join()
        with self._token:  # a caller's own commit still running
            pass

    def _run(self) -> None:
        """The writer loop. Runs in the writer thread.

        Group commit with a short linger (as PostgreSQL's commit_delay/commit_siblings):
        when the previous batch served several callers, they are likely to come back at
        once, so the writer waits up to COMMIT_LINGER seconds for as many requests as the
        previous batch held before it commits. A lone caller never waits, and a linger can
        never exceed COMMIT_LINGER, which is small beside the commit's own fsyncs.

        A batch's callers wake each other in a chain, which takes microseconds. Whoever of a
        batch is still asleep two batches later, or after IDLE_SECONDS without requests (a
        signal interrupted a caller between its wake-up and passing it on), is woken by the
        writer, and everyone is woken before it stops.
        """
        inbox = self._inbox
        previous = 1
        recent: collections.deque[list[WriteRequest]] = collections.deque()
        while True:
            items = inbox.take(1, IDLE_SECONDS if recent else None, MAX_BATCH_REQUESTS)
            while recent and (not items or len(recent) > 1):
                wake_stragglers(recent.popleft())
            if not items:
                continue
            if len(items) < previous and None not in items:
                items += inbox.take(previous - len(items), COMMIT_LINGER,
                                    MAX_BATCH_REQUESTS - len(items))
            batch = [item for item in items if item is not None]
            if batch:
                previous = len(batch)
                with self._token:
                    self._commit(batch)
                recent.append(batch)
            inbox.committed()
            if None in items:
                while recent:
                    wake_stragglers(recent.popleft())
                return

    def _commit(self, batch: list[WriteRequest]) -> None:
        """Apply and commit one batch, growing the map and retrying when it is full."""
        try:
            while True:
                try:
                    with self._shared.transaction(write=True) as txn:
                        results = self._apply_batch(txn, batch)
                    break
                except lmdb.MapFullError:
                    self._shared.grow()
                except lmdb.MapResizedError:
                    self._shared.adopt_map_size()
        except LedgerFullError as error:
            self._fail(batch, error)
            return
        except (lmdb.DiskError, OSError, lmdb.Error) as error:
            self._fail(batch, self._write_error(error))
            return
        except BaseException as error:  # never leave a caller waiting forever
            self._fail(batch, error)
            return
        self.batches_committed += 1
        record_group_commit(len(batch))
        self._on_commit()
        answer(batch, results)

    def _write_error(self, error: BaseException) -> LedgerError:
        """The error for a commit that failed: a full disk named as such (LMDB often reports
        it as an I/O error), anything else as it came."""
        path = self._shared.path
        try:
            free = shutil.disk_usage(path).free
        except OSError:
            free = None
        text = str(error)
        if isinstance(error, lmdb.DiskError) or "No space left" in text or (
            free is not None and free < DISK_FULL_MARGIN
        ):
            room = f"{free} bytes free" if free is not None else "no room"
            return LedgerFullError(
                f"the disk holding the ledger at {path} is full ({room}; {text}): free space "
                "on it (or move the ledger to a bigger disk, or compact it), then run the "
                "command again; nothing was written"
            )
        return LedgerError(f"cannot write the ledger at {path}: {text}")

    @staticmethod
    def _fail(batch: list[WriteRequest], error: BaseException) -> None:
        answer(batch, [error] * len(batch))
