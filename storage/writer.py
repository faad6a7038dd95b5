"""Group commit: one writer thread owns every LMDB write transaction of a ledger in a process.

Callers hand in requests and wait; the writer takes whatever is waiting, applies it in one
write transaction (one fsync for many events), commits, and answers each caller with its own
result or its own error. A write transaction never spans anything slow: requests arrive
encoded, and callers are woken only after the commit.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import lmdb

from ..errors import LedgerClosedError, LedgerError, LedgerFullError
from .environment import SharedEnvironment

MAX_BATCH_REQUESTS = 512
COMMIT_LINGER = 0.0005
"""Seconds the writer may wait for callers of the previous batch to come back (see _run)."""

BatchApply = Callable[[Any, list["WriteRequest"]], list[Any]]
"""Applies a batch inside one write txn; returns one result (or exception) per request."""


class WriteRequest:
    """One caller's unit of work for the writer, and the latch its caller waits on.

    The latch is a bare lock, held from creation until the writer answers: the cheapest
    one-shot wake-up CPython has (a `concurrent.futures.Future` costs a Condition, its lock
    and a waiter lock per request, which shows in group-commit profiles).
    """

    __slots__ = ("payload", "_latch", "_result", "_error")

    def __init__(self, payload: Any) -> None:
        self.payload = payload
        self._latch = threading.Lock()
        self._latch.acquire()
        self._result: Any = None
        self._error: BaseException | None = None

    def set_result(self, result: Any) -> None:
        """Answer the caller with a result. Writer thread, once."""
        self._result = result
        self._latch.release()

    def set_exception(self, error: BaseException) -> None:
        """Answer the caller with an error. Writer thread, once."""
        self._error = error
        self._latch.release()

    def result(self, timeout: float | None = None) -> Any:
        """Block until answered; return the result or raise the error (TimeoutError if late)."""
        if not self._latch.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError("the ledger writer did not answer in time")
        self._latch.release()  # answered for good: later calls return at once
        if self._error is not None:
            raise self._error
        return self._result


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
        self._queue: queue.SimpleQueue[WriteRequest | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self.batches_committed = 0
        self._thread = threading.Thread(
            target=self._run, name=f"chatledger-writer:{shared.path.name}", daemon=True
        )
        self._thread.start()

    def submit(self, payload: Any, timeout: float | None = None) -> Any:
        """Queue a request and block until the writer committed it (or failed it)."""
        request = WriteRequest(payload)
        with self._lock:
            if self._closed:
                raise LedgerClosedError("the ledger is closed")
            self._queue.put(request)
        return request.result(timeout)

    def close(self) -> None:
        """Finish what is queued, then stop the writer thread (blocks until it has)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        """The writer loop. Runs in the writer thread.

        Group commit with a short linger (as PostgreSQL's commit_delay/commit_siblings):
        when the previous batch served several callers, they are likely to come back at
        once, so the writer waits up to COMMIT_LINGER seconds for as many requests as the
        previous batch held before it commits. A lone caller never waits, and a linger can
        never exceed COMMIT_LINGER, which is small beside the commit's own fsyncs.
        """
        stopping = False
        previous = 1
        clock = time.perf_counter
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = 0.0
            while len(batch) < MAX_BATCH_REQUESTS:
                try:
                    request = self._queue.get_nowait()
                except queue.Empty:
                    if len(batch) >= previous:
                        break
                    now = clock()
                    if not deadline:
                        deadline = now + COMMIT_LINGER
                    if now >= deadline:
                        break
                    try:
                        request = self._queue.get(timeout=deadline - now)
                    except queue.Empty:
                        break
                if request is None:
                    stopping = True
                    break
                batch.append(request)
            previous = len(batch)
            self._commit(batch)

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
        except lmdb.DiskError as error:
            self._fail(batch, LedgerFullError(f"the disk is full or failing: {error}"))
            return
        except OSError as error:
            self._fail(batch, LedgerError(f"cannot write the ledger: {error}"))
            return
        except lmdb.Error as error:
            self._fail(batch, LedgerError(f"cannot write the ledger: {error}"))
            return
        except BaseException as error:  # never leave a caller waiting forever
            self._fail(batch, error)
            return
        self.batches_committed += 1
        self._on_commit()
        for request, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                request.set_exception(result)
            else:
                request.set_result(result)

    @staticmethod
    def _fail(batch: list[WriteRequest], error: BaseException) -> None:
        for request in batch:
            request.set_exception(error)
