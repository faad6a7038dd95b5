"""The group-commit writer: one commit for many callers, each answered with its own outcome.

The writer wakes a batch's first caller and each caller wakes the next; these tests hold the
writer inside a job so that a known set of appends lands in one batch, then check that every
caller gets its own result or error, and that a caller interrupted while it waits (a signal
in the main thread) strands nobody behind it. Every wait is bounded.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from chatledger.errors import ConcurrencyError
from chatledger.events import MessageSent, SessionCreated
from chatledger.storage import EventLog


class Outcomes:
    """What each appending thread got back, by session id."""

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.lock = threading.Lock()

    def appender(self, log: EventLog, session_id: str, expected: int) -> threading.Thread:
        """A started thread appending one event to `session_id` at `expected`."""

        def run() -> None:
            try:
                outcome: Any = log.append(session_id, [SessionCreated()], expected)
            except Exception as error:  # the test inspects it
                outcome = error
            with self.lock:
                self.results[session_id] = outcome

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


def hold_writer(log: EventLog) -> Callable[[], None]:
    """Keep the writer busy in a job until the returned function is called."""
    entered, release = threading.Event(), threading.Event()

    def job(txn: Any) -> None:
        entered.set()
        release.wait(30)

    threading.Thread(target=log.run_in_writer, args=(job,), daemon=True).start()
    assert entered.wait(10), "the writer never ran the holding job"
    return release.set  # the writer is inside the job now: what comes next queues up


def wait_for_queue(log: EventLog, count: int) -> None:
    """Wait (bounded) until `count` requests wait for the writer."""
    writer = log.store.writer
    assert writer is not None
    deadline = time.monotonic() + 10
    while writer.queued() < count:
        assert time.monotonic() < deadline, "the appends never reached the writer's queue"
        time.sleep(0.01)


def test_every_caller_of_one_batch_gets_its_own_records(log: EventLog) -> None:
    outcomes = Outcomes()
    release = hold_writer(log)
    names = [f"s{index:02d}" for index in range(32)]
    threads = [outcomes.appender(log, name, 0) for name in names]
    wait_for_queue(log, 32)
    batches = log.store.writer.batches_committed  # type: ignore[union-attr]
    release()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    # the job's batch, then one batch for all 32 appends
    assert log.store.writer.batches_committed - batches <= 2  # type: ignore[union-attr]
    positions = set()
    for name in names:
        (record,) = outcomes.results[name]
        assert (record.session_id, record.version) == (name, 1)
        positions.add(record.position)
    assert len(positions) == 32
    assert log.verify().ok


def test_a_lone_append_commits_on_its_callers_thread_unless_that_is_the_main_one(
        log: EventLog) -> None:
    writer = log.store.writer
    assert writer is not None
    committed_on: list[threading.Thread] = []
    apply_batch = writer._apply_batch

    def observed(txn: Any, batch: list[Any]) -> list[Any]:
        committed_on.append(threading.current_thread())
        return apply_batch(txn, batch)

    writer._apply_batch = observed  # type: ignore[method-assign]
    outcomes = Outcomes()
    caller = outcomes.appender(log, "alone", 0)
    caller.join(30)
    log.append("main", [SessionCreated()], 0)
    assert outcomes.results["alone"][0].version == 1
    assert committed_on[0] is caller  # the writer was idle: no hand-off
    assert committed_on[1] is not threading.main_thread()  # the writer's thread
    assert committed_on[1].name.startswith("chatledger-writer")
    assert log.verify().ok


def test_errors_in_a_batch_reach_only_their_own_callers(log: EventLog) -> None:
    for name in ("b", "d"):
        log.append(name, [SessionCreated()], 0)
    outcomes = Outcomes()
    release = hold_writer(log)
    threads = [outcomes.appender(log, name, 0) for name in ("a", "b", "c", "d", "e")]
    wait_for_queue(log, 5)
    release()
    for thread in threads:
        thread.join(30)
    for name in ("b", "d"):
        assert isinstance(outcomes.results[name], ConcurrencyError)
        assert log.version(name) == 1
    for name in ("a", "c", "e"):
        assert outcomes.results[name][0].session_id == name
        assert log.version(name) == 1


class Interrupted(Exception):
    """Raised by the test's SIGALRM handler inside a waiting append."""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGALRM")
@pytest.mark.parametrize("busy", [False, True], ids=["idle writer", "busy writer"])
def test_a_caller_interrupted_while_waiting_strands_nobody(log: EventLog, busy: bool) -> None:
    outcomes = Outcomes()
    release = hold_writer(log)
    done = threading.Event()

    def keep_the_writer_busy() -> None:
        # From just after the held batch committed on, so the writer is never idle for long.
        while log.version("main") != 1 and not done.is_set():
            time.sleep(0.001)
        version = 0
        while not done.is_set():
            log.append("busy", [SessionCreated() if version == 0 else
                                MessageSent(turn=version, text="x")], version)
            version += 1

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    threads: list[threading.Thread] = []
    try:
        # The main thread's append is queued first, so it heads the batch: the writer
        # wakes it, but it has left, so the chain of wake-ups starts nowhere.
        threading.Timer(0.3, lambda: threads.extend(
            outcomes.appender(log, f"t{index}", 0) for index in range(8))).start()
        if busy:
            threading.Timer(0.6, threading.Thread(target=keep_the_writer_busy,
                                                  daemon=True).start).start()
        threading.Timer(1.5, release).start()
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        with pytest.raises(Interrupted):
            log.append("main", [SessionCreated()], 0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    try:
        started = time.monotonic()
        while len(threads) < 8:
            assert time.monotonic() - started < 10
            time.sleep(0.01)
        for thread in threads:
            thread.join(10)
        assert not any(thread.is_alive() for thread in threads), "callers left asleep"
    finally:
        done.set()
    assert sorted(outcomes.results) == [f"t{index}" for index in range(8)]
    # the interrupted append was queued, so it was committed all the same
    assert log.version("main") == 1
    log.append("main", [MessageSent(turn=1, text="after")], 1)
