"""The PostgreSQL writer's pipeline (`storage/postgresql/pipeline.py`): calls sent without
waiting for the ones before them, each its own transaction, answered in order; an error fails
only its call, a lost connection fails every unanswered one and the next call reconnects.
And the writer on it: a batch sent while the one before it runs is sealed for the head that
one leaves, and when that one does not seal, the next falls back too and inline seals come
back after the sealer; a batch's callers are woken in turn, leaving out one that gave up."""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

import pytest

try:
    import psycopg
except ImportError:  # pragma: no cover - the extra is not installed
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("psycopg is not installed: pip install -e '.[postgresql]'",
                allow_module_level=True)

from testkit import wait_until

from chatledger.errors import ConcurrencyError
from chatledger.events import MessageSent, SessionCreated
from chatledger.storage.postgresql import PostgresStore, open_postgresql_store
from chatledger.storage.postgresql.connection import ConnectionLostError
from chatledger.storage.postgresql.pipeline import StatementPipeline
from chatledger.storage.postgresql.schema import SESSION_LOCK_CLASS, session_lock_key
from chatledger.storage.postgresql.writer import _Request, answer_in_turn

# Inserts a row and says its transaction; waits first for a session advisory lock the test
# may hold, so a call can be kept running on the server while others queue behind it.
_INSERT = ("WITH locked AS (SELECT pg_advisory_xact_lock(1, $2::int4))"
           " INSERT INTO pipelined (id) SELECT $1::int4 FROM locked"
           " RETURNING id, pg_current_xact_id()::text")


def int4(value: int) -> bytes:
    """An int4 parameter in binary."""
    return struct.pack("!i", value)


@pytest.fixture
def pipeline(postgres_url: str) -> Iterator[StatementPipeline]:
    """A pipeline of `_INSERT` calls, three at most unanswered."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE pipelined (id int4 PRIMARY KEY)")
    calls = StatementPipeline(lambda: psycopg.connect(postgres_url), "insert_row", _INSERT,
                              depth=3)
    yield calls
    calls.close()


@pytest.fixture
def lock_holder(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the test's own, to hold advisory locks."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        yield connection


def test_calls_are_answered_in_order_each_in_its_own_transaction(
        pipeline: StatementPipeline, lock_holder: psycopg.Connection[Any]) -> None:
    lock_holder.execute("SELECT pg_advisory_lock(1, 7)")
    first = pipeline.send([int4(1), int4(7)], 5)  # held on the server by the lock
    rest = [pipeline.send([int4(number), int4(0)], 5) for number in (2, 3)]
    assert pipeline.unanswered == 3
    assert not pipeline.wait_for_room(0.05)  # three unanswered: no room for a fourth
    lock_holder.execute("SELECT pg_advisory_unlock(1, 7)")
    rows = [pipeline.wait(call, 5) for call in [first, *rest]]
    assert [row[0] for row in rows] == [b"1", b"2", b"3"]
    transactions = [int(row[1] or 0) for row in rows]
    assert transactions == sorted(set(transactions))  # three commits, in the order sent
    assert pipeline.unanswered == 0 and pipeline.wait_for_room(0.05)


def test_an_error_fails_only_its_own_call(pipeline: StatementPipeline,
                                          postgres_url: str) -> None:
    calls = [pipeline.send([int4(number), int4(0)], 5) for number in (1, 1, 2)]
    assert pipeline.wait(calls[0], 5)[0] == b"1"
    with pytest.raises(psycopg.errors.UniqueViolation):
        pipeline.wait(calls[1], 5)
    assert pipeline.wait(calls[2], 5)[0] == b"2"
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT array_agg(id ORDER BY id) FROM pipelined"
                                  ).fetchone() == ([1, 2],)


def test_a_lost_connection_fails_every_unanswered_call_and_the_next_call_reconnects(
        pipeline: StatementPipeline, lock_holder: psycopg.Connection[Any]) -> None:
    lock_holder.execute("SELECT pg_advisory_lock(1, 7)")
    backend = pipeline.connection().info.backend_pid
    calls = [pipeline.send([int4(number), int4(7)], 5) for number in (1, 2)]
    lock_holder.execute("SELECT pg_terminate_backend(%s)", [backend])
    for call in calls:
        with pytest.raises(ConnectionLostError):
            pipeline.wait(call, 5)
    lock_holder.execute("SELECT pg_advisory_unlock(1, 7)")
    assert pipeline.wait(pipeline.send([int4(3), int4(0)], 5), 5)[0] == b"3"
    assert pipeline.connection().info.backend_pid != backend


def test_a_server_that_is_gone_is_a_connection_lost_error(postgres_url: str) -> None:
    def refuse() -> psycopg.Connection[Any]:
        return psycopg.connect(postgres_url.replace("postgresql://", "postgresql://nobody@"),
                               connect_timeout=2)

    calls = StatementPipeline(refuse, "never", "SELECT 1", depth=1)
    with pytest.raises(ConnectionLostError, match="cannot reach PostgreSQL"):
        calls.send([], 1)
    calls.close()


def hold_session(connection: psycopg.Connection[Any], session_id: str, *, held: bool) -> None:
    """Take or let go a session's advisory lock, as another node's append would hold it."""
    function = "pg_advisory_lock" if held else "pg_advisory_unlock"
    connection.execute(f"SELECT {function}(%s, %s)",
                       [SESSION_LOCK_CLASS, session_lock_key(session_id)])


def append_in_background(store: PostgresStore, session_id: str, version: int
                         ) -> tuple[threading.Thread, list[int]]:
    """Append one message in a thread; the positions it is answered with."""
    positions: list[int] = []
    thread = threading.Thread(target=lambda: positions.extend(
        record.position for record in store.append(
            session_id, [MessageSent(turn=version, text="hi")], version)))
    thread.start()
    return thread, positions


def test_a_batch_sent_behind_a_running_one_is_sealed_for_the_head_it_leaves(
        postgres_url: str, lock_holder: psycopg.Connection[Any]) -> None:
    with open_postgresql_store(postgres_url, seal_interval=3600, pipeline_depth=2) as store:
        for session_id in ("alpha", "beta"):
            store.append(session_id, [SessionCreated()], 0)
        inline = store.writer.sealed_batches
        hold_session(lock_holder, "alpha", held=True)
        first, first_positions = append_in_background(store, "alpha", 1)
        assert wait_until(lambda: store.writer._pipeline.unanswered == 1)
        second, second_positions = append_in_background(store, "beta", 1)
        assert wait_until(lambda: store.writer._pipeline.unanswered == 2)  # sent behind it
        hold_session(lock_holder, "alpha", held=False)
        for thread in (first, second):
            thread.join(30)
        assert (first_positions, second_positions) == ([3], [4])
        assert store.writer.sealed_batches == inline + 2  # both in their own transaction
        assert store.verify().ok


def test_when_a_batch_cannot_seal_in_its_call_neither_can_the_one_behind_and_both_seal_locked(
        postgres_url: str, lock_holder: psycopg.Connection[Any]) -> None:
    """The batch ahead assumed a head another node moved: its call writes nothing, and the
    one sent behind it, sealed for the head it would have left, neither; the writer seals both
    in transactions that wait for the seal row, and seals in its calls again after."""
    node_a = open_postgresql_store(postgres_url, seal_interval=3600, pipeline_depth=2)
    node_b = open_postgresql_store(postgres_url, seal_interval=3600)
    try:
        for session_id in ("alpha", "beta"):
            node_a.append(session_id, [SessionCreated()], 0)
        node_b.append("gamma", [SessionCreated()], 0)  # node a's head is now stale
        inline = node_a.writer.sealed_batches
        hold_session(lock_holder, "alpha", held=True)
        first, first_positions = append_in_background(node_a, "alpha", 1)
        assert wait_until(lambda: node_a.writer._pipeline.unanswered == 1)
        second, second_positions = append_in_background(node_a, "beta", 1)
        assert wait_until(lambda: node_a.writer._pipeline.unanswered == 2)
        hold_session(lock_holder, "alpha", held=False)
        for thread in (first, second):
            thread.join(30)
        assert node_a.writer.sealed_batches == inline + 2  # both, under the seal row's lock
        assert node_a.writer.slow_batches == 2
        assert sorted(first_positions + second_positions) == [4, 5]
        node_a.append("alpha", [MessageSent(turn=2, text="again")], 2)
        assert node_a.writer.sealed_batches == inline + 3  # it learned the head again
        assert node_a.writer.slow_batches == 2
        assert node_a.head().position == 6
        assert node_a.verify().ok
    finally:
        node_a.close()
        node_b.close()


class _AnnouncingLatch:
    """A request's latch that says when its caller has begun to wait on it."""

    def __init__(self, request: _Request) -> None:
        self._lock = request._latch
        self.waiting = threading.Event()
        request._latch = self

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """The latch's acquire, announced first."""
        self.waiting.set()
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        """The latch's release."""
        self._lock.release()


def waiting_callers(requests: list[_Request], timeout: float) -> tuple[list[threading.Thread],
                                                                       dict[int, object]]:
    """A thread per request, waiting for its answer as the caller that made it (returns once
    each has begun to wait); what each got (a result or an error)."""
    got: dict[int, object] = {}
    latches = [_AnnouncingLatch(request) for request in requests]

    def wait(number: int) -> None:
        requests[number].caller = threading.get_ident()
        try:
            got[number] = requests[number].result(timeout)
        except FutureTimeoutError as error:
            got[number] = error

    threads = [threading.Thread(target=wait, args=(number,)) for number in range(len(requests))]
    for thread in threads:
        thread.start()
    for latch in latches:
        assert latch.waiting.wait(10)
    return threads, got


def test_callers_answered_in_turn_each_wake_the_next() -> None:
    requests = [_Request([]) for _ in range(4)]
    threads, got = waiting_callers(requests, 10)
    own = _Request([])  # the answering thread's own: in the batch, woken by nobody
    for number, request in enumerate([*requests, own]):
        request.settle([[]] * number)
    started = time.monotonic()
    answer_in_turn([own, *requests])
    for thread in threads:
        thread.join(10)
    assert time.monotonic() - started < 5  # woken, not timed out
    assert got == {number: [[]] * number for number in range(4)}
    assert own.result(0) == [[]] * 4


def test_a_caller_that_gave_up_is_left_out_of_a_chain_of_answers() -> None:
    requests = [_Request([]) for _ in range(3)]
    gave_up, outcome = waiting_callers(requests[1:2], 0.05)
    gave_up[0].join(10)
    assert isinstance(outcome[0], FutureTimeoutError)
    threads, got = waiting_callers([requests[0], requests[2]], 10)
    for request in requests:
        request.settle([])
    started = time.monotonic()
    answer_in_turn(requests)  # the chain leaves out the one that left
    for thread in threads:
        thread.join(10)
    assert time.monotonic() - started < 5  # woken, not timed out
    assert got == {0: [], 1: []}


def test_an_append_to_a_session_in_flight_waits_for_that_batch_and_is_decided_on_it(
        postgres_url: str, lock_holder: psycopg.Connection[Any]) -> None:
    """Two racing appends at the same expected version, the first held on the server: the
    second is not sent behind it on a guess, but decided on what the first wrote."""
    with open_postgresql_store(postgres_url, seal_interval=3600, pipeline_depth=2) as store:
        store.append("alpha", [SessionCreated()], 0)
        hold_session(lock_holder, "alpha", held=True)
        first, first_positions = append_in_background(store, "alpha", 1)
        assert wait_until(lambda: store.writer._pipeline.unanswered == 1)
        errors: list[BaseException] = []

        def second_append() -> None:
            try:
                store.append("alpha", [MessageSent(turn=1, text="racing")], 1)
            except ConcurrencyError as error:
                errors.append(error)

        second = threading.Thread(target=second_append)
        second.start()
        assert wait_until(lambda: store.writer._flight_waiters == 1)  # it waits for alpha
        assert store.writer._pipeline.unanswered == 1  # nothing sent behind the held batch
        hold_session(lock_holder, "alpha", held=False)
        for thread in (first, second):
            thread.join(30)
        assert first_positions == [2] and len(errors) == 1
        assert [record.version for record in store.read_session("alpha")] == [1, 2]
        assert store.verify().ok
