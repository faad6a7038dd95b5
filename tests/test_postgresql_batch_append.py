"""The PostgreSQL writer's one-call batches (schema 4's `chatledger.append_batch`) against a
real throwaway cluster: a schema-3 database migrated to 4, and callers sharing one batch
where one append is stale or fenced out, on the state the writer assumed and on the state
it had to read again because another node appended."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import pytest

try:
    import psycopg
except ImportError:  # pragma: no cover - the extra is not installed
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("psycopg is not installed: pip install -e '.[postgresql]'",
                allow_module_level=True)

from chatledger.errors import ConcurrencyError, StaleLeaseError
from chatledger.events import MessageSent, SessionCreated
from chatledger.events.codec import SCHEMA_VERSION as EVENT_SCHEMA_VERSION
from chatledger.events.codec import encode_event
from chatledger.events.model import Event, Recorded
from chatledger.events.projections import SessionInfo, evolve
from chatledger.storage import GENESIS
from chatledger.storage.leases import Lease, LeaseOwner
from chatledger.storage.postgresql import SCHEMA_VERSION, PostgresStore, open_postgresql_store
from chatledger.storage.postgresql.records import encode_info
from chatledger.storage.postgresql.schema import MIGRATIONS

NODE_A = LeaseOwner(host="node-a", pid=1, started_at=1.0, token="a")
NODE_B = LeaseOwner(host="node-b", pid=2, started_at=2.0, token="b")


def sql(url: str, statement: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
    """Run one statement on its own connection."""
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStore]:
    """A store with one leader, so that callers queued behind it share the next batch."""
    opened = open_postgresql_store(postgres_url, writers=1)
    yield opened
    opened.close()


def one_batch(store: PostgresStore, calls: list[Callable[[], object]]) -> list[object]:
    """Run `calls` on their own threads so that they land in one batch, in this order: a
    first append holds the only leader's place (in its transaction) until all of them wait
    behind it. Returns each call's result or the exception it raised."""
    results: list[object] = [None] * len(calls)
    held: list[bool] = []

    def run(number: int) -> None:
        try:
            results[number] = calls[number]()
        except Exception as error:  # noqa: BLE001 - the result under test
            results[number] = error

    threads = [threading.Thread(target=run, args=(number,)) for number in range(len(calls))]

    def hold(stage: str, connection: psycopg.Connection[object]) -> None:
        if stage != "before_commit" or held:
            return
        held.append(True)
        for queued, thread in enumerate(threads, start=1):
            thread.start()  # each one queued before the next starts: the batch keeps the order
            assert store.writer.wait_queued(queued, 30) and store.writer.queued() == queued

    store.append("holder", [SessionCreated()], 0)  # the holder session exists
    store.writer.fault = hold
    commits = store.writer.commits
    try:
        store.append("holder", [MessageSent(turn=1, text="hold")], 1)
        for thread in threads:
            thread.join(timeout=60)
    finally:
        store.writer.fault = None
    assert held and store.writer.commits == commits + 2  # the holder's and the shared one
    return results


def message(text: str) -> list[Event]:
    """One message event."""
    return [MessageSent(turn=1, text=text)]


@pytest.mark.parametrize("stale_state", [False, True], ids=["assumed-state", "read-again"])
def test_a_stale_append_in_a_shared_batch_fails_only_its_caller(
        store: PostgresStore, stale_state: bool) -> None:
    for session_id in ("alpha", "beta", "gamma"):
        store.append(session_id, [SessionCreated()], 0)
    if stale_state:  # another node appends to beta: this node's assumed state is stale
        with open_postgresql_store(store.url) as other_node:
            other_node.append("beta", message("from the other node"), 1)
    slow_before = store.writer.slow_batches
    stale_version = 1 if stale_state else 0  # beta is at 2, or at 1
    results = one_batch(store, [
        lambda: store.append("alpha", message("alpha's"), 1),
        lambda: store.append("beta", message("beta's, stale"), stale_version),
        lambda: store.append("gamma", message("gamma's"), 1),
        lambda: store.append("delta", [SessionCreated()], 0),
    ])
    alpha, beta, gamma, delta = results
    assert isinstance(beta, ConcurrencyError) and beta.actual == stale_version + 1
    for records in (alpha, gamma, delta):
        assert isinstance(records, list) and records[0].position > 0  # committed and sealed
    assert [r.event.text for r in store.read_session("alpha")[1:]] == ["alpha's"]
    assert [r.event.text for r in store.read_session("gamma")[1:]] == ["gamma's"]
    assert [getattr(r.event, "text", None) for r in store.read_session("beta")[1:]] == (
        ["from the other node"] if stale_state else [])
    # Read again under the locks when the assumed state was stale (and sealed there), else not.
    assert (store.writer.slow_batches > slow_before) == stale_state
    assert store.verify().ok


def test_two_appends_to_one_session_in_a_shared_batch_chain_in_order(
        store: PostgresStore) -> None:
    store.append("alpha", [SessionCreated()], 0)
    first, other, late = one_batch(store, [
        lambda: store.append("alpha", message("first"), 1),
        lambda: store.append("beta", [SessionCreated()], 0),
        lambda: store.append("alpha", message("also at 1"), 1),
    ])
    assert isinstance(first, list) and isinstance(other, list)
    assert isinstance(late, ConcurrencyError) and late.actual == 2
    assert [r.event.text for r in store.read_session("alpha")[1:]] == ["first"]
    assert store.verify().ok


def test_a_fenced_append_in_a_shared_batch_is_refused_while_the_others_commit(
        store: PostgresStore) -> None:
    for session_id in ("alpha", "beta", "gamma"):
        store.append(session_id, [SessionCreated()], 0)
    lease_a = store.acquire_lease("alpha", NODE_A, ttl=30)
    lease_beta = store.acquire_lease("beta", NODE_A, ttl=30)
    assert lease_a is not None and lease_beta is not None
    with open_postgresql_store(store.url) as node_b:  # node B finds A dead and takes alpha
        lease_b = node_b.acquire_lease("alpha", NODE_B, ttl=30, take_over=NODE_A)
    assert lease_b is not None and lease_b.epoch == lease_a.epoch + 1
    fenced_out, kept, released, plain = one_batch(store, [
        lambda: store.append("alpha", message("a, fenced out"), 1, lease=lease_a),
        lambda: store.append("beta", message("a, still beta's owner"), 1, lease=lease_beta),
        lambda: store.append("beta", message("a, lets beta go"), 2, lease=lease_beta,
                             release_lease=True),
        lambda: store.append("gamma", message("no lease"), 1),
    ])
    assert isinstance(fenced_out, StaleLeaseError)
    for records in (kept, released, plain):
        assert isinstance(records, list) and records[0].position > 0
    assert store.read_session("alpha")[1:] == []
    assert [r.event.text for r in store.read_session("beta")[1:]] == [
        "a, still beta's owner", "a, lets beta go"]
    assert store.lease("alpha") == lease_b
    assert store.lease("beta") == Lease(session_id="beta", epoch=lease_beta.epoch, owner=None,
                                        expires_at=0.0)
    with pytest.raises(StaleLeaseError):  # released in the batch: fenced from now on
        store.append("beta", message("too late"), 3, lease=lease_beta)
    assert store.verify().ok


def _schema_3_database(url: str) -> None:
    """The schema-3 layout built by its own DDL, holding what a schema-3 node wrote: two
    sessions' events not sealed yet, their index entries and a lease."""
    now = datetime.now(timezone.utc)
    with psycopg.connect(url) as connection:
        connection.execute("CREATE SCHEMA chatledger")
        connection.execute("CREATE TABLE chatledger.schema_version ("
                           " singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),"
                           " version integer NOT NULL)")
        for version in (1, 2, 3):
            connection.execute(MIGRATIONS[version].encode())
        connection.execute("INSERT INTO chatledger.schema_version (version) VALUES (3)")
        for session_id in ("alpha", "beta"):
            events: list[Event] = [SessionCreated(), MessageSent(turn=1, text=f"{session_id} 1")]
            info = SessionInfo(session_id=session_id)
            for version, event in enumerate(events, start=1):
                connection.execute(
                    "INSERT INTO chatledger.events"
                    " (session_id, version, recorded_at, schema_version, event)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    [session_id, version, now, EVENT_SCHEMA_VERSION, encode_event(event)])
                info = evolve(info, Recorded(
                    position=0, session_id=session_id, version=version, recorded_at=now,
                    schema_version=EVENT_SCHEMA_VERSION, prev_session_hash=GENESIS,
                    prev_log_hash=GENESIS, event=event))
            connection.execute("INSERT INTO chatledger.sessions VALUES (%s, %s, %s)",
                               [session_id, len(events), encode_info(info)])
        connection.execute("INSERT INTO chatledger.leases"
                           " (session_id, epoch, host, pid, started_at, token, expires_at)"
                           " VALUES ('alpha', 5, %s, %s, %s, %s,"
                           "  extract(epoch FROM clock_timestamp()) + 3600)",
                           [NODE_A.host, NODE_A.pid, NODE_A.started_at, NODE_A.token])


def test_a_schema_3_database_is_migrated_to_the_current_schema_and_carries_on(
        postgres_url: str) -> None:
    _schema_3_database(postgres_url)
    assert sql(postgres_url, "SELECT to_regproc('chatledger.append_batch')") == [(None,)]
    with open_postgresql_store(postgres_url) as store:
        assert SCHEMA_VERSION == 7
        assert sql(postgres_url, "SELECT version FROM chatledger.schema_version") == [(7,)]
        # append_batch (schema 4) is gone since schema 7: nothing calls it any more.
        assert sql(postgres_url, "SELECT to_regproc('chatledger.append_batch') IS NULL,"
                                 " to_regproc('chatledger.append_batch_sealed') IS NOT NULL,"
                                 " to_regproc('chatledger.seal_store') IS NOT NULL") == [
            (True, True, True)]
        store.seal_now()  # the schema-3 node's rows get their positions
        assert store.head().position == 4
        # ... which a listing looks up for entries without a position of their own (schema 7).
        assert {info.session_id: info.last_position for info in store.sessions()} == {
            "alpha": 2, "beta": 4}
        lease = store.lease("alpha")
        assert lease is not None and lease.epoch == 5 and lease.owner == NODE_A
        records = store.append("alpha", message("after the upgrade"), 2, lease=lease)
        assert records[0].version == 3 and records[0].position == 5
        with pytest.raises(ConcurrencyError):
            store.append("beta", message("stale"), 1)
        assert store.append("beta", message("beta 2"), 2)[0].version == 3
        assert store.verify().ok
    with open_postgresql_store(postgres_url) as again:  # opening a current schema changes nothing
        assert again.info("alpha") is not None
        assert [r.version for r in again.read_session("alpha")] == [1, 2, 3]
