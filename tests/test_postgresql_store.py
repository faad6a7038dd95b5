"""The PostgreSQL store against a real throwaway cluster (tests/support/postgres_server.py):
the port's behaviour, the global order under concurrent writers, tamper evidence, the
schema's versioning and the faults a shared server brings (down, pool exhausted, connection
lost mid-append, LISTEN connection dropped)."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

try:
    import psycopg
except ImportError:  # pragma: no cover - the extra is not installed
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("psycopg is not installed: pip install -e '.[postgresql]'",
                allow_module_level=True)

from chatledger.audit.jsonl import export_jsonl, import_jsonl
from chatledger.errors import ConcurrencyError, LedgerError, LedgerMissingError, StaleLeaseError
from chatledger.events import MessageSent, SessionCreated, StudyContextSet
from chatledger.storage import GENESIS, EventLog, Head, SessionAppend, open_store
from chatledger.storage.hashing import HASH_SIZE
from chatledger.storage.leases import Lease, LeaseOwner
from chatledger.storage.postgresql import (
    SCHEMA_VERSION,
    PoolExhaustedError,
    PostgresStore,
    open_postgresql_store,
)
from chatledger.storage.postgresql.connection import redact


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStore]:
    """An open store on a fresh database."""
    opened = open_postgresql_store(postgres_url)
    yield opened
    opened.close()


def sql(url: str, statement: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
    """Run one statement on its own connection (as an operator, or an attacker, would)."""
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def create(store: PostgresStore, session_id: str, messages: int = 0) -> None:
    """A session with `messages` messages, appended one by one."""
    store.append(session_id, [SessionCreated(mode="user")], 0)
    for turn in range(1, messages + 1):
        store.append(session_id, [MessageSent(turn=turn, text=f"{session_id} {turn}")], turn)


# -- the port --------------------------------------------------------------------------


def test_append_answers_sealed_records_that_every_read_agrees_with(store: PostgresStore) -> None:
    first = store.append("alpha", [SessionCreated(mode="power")], 0)
    second = store.append("alpha", [MessageSent(turn=1, text="hello"),
                                    StudyContextSet(study_id="s")], 1)
    records = first + second
    assert [record.position for record in records] == [1, 2, 3]
    assert [record.version for record in records] == [1, 2, 3]
    assert store.read_session("alpha") == records
    assert store.read_session("alpha", from_version=2) == records[1:]
    assert list(store.read_all()) == records
    assert list(store.read_all(2, 2)) == records[1:2]
    info, tail = store.latest("alpha", 2)
    assert tail == records[1:]
    assert info is not None and info.version == 3 and info.last_position == 3
    assert info.mode == "power" and info.study_id == "s" and info.message_count == 1
    assert store.info("alpha") == info
    assert store.sessions() == [info]
    assert store.info("nobody") is None and store.read_session("nobody") == []
    assert store.latest("nobody", 5) == (None, [])


def test_stale_expected_version_writes_nothing(store: PostgresStore) -> None:
    create(store, "alpha")
    with pytest.raises(ConcurrencyError) as raised:
        store.append("alpha", [MessageSent(turn=1, text="late")], 0)
    assert raised.value.actual == 1
    assert len(store.read_session("alpha")) == 1
    assert store.head().position == 1
    assert sql(store.url, "SELECT count(*) FROM chatledger.events")[0][0] == 1


def test_atomic_multi_session_append_commits_all_or_none(store: PostgresStore) -> None:
    create(store, "alpha")
    with pytest.raises(ConcurrencyError):
        store.append_atomically([
            SessionAppend("beta", [SessionCreated()], 0),
            SessionAppend("alpha", [MessageSent(turn=1, text="x")], 0),  # stale
        ])
    assert store.info("beta") is None and store.head().position == 1
    written = store.append_atomically([
        SessionAppend("beta", [SessionCreated()], 0),
        SessionAppend("alpha", [MessageSent(turn=1, text="x")], 1),
    ])
    assert [[record.position for record in records] for records in written] == [[2], [3]]
    nothing_for_alpha = store.append_atomically([
        SessionAppend("gamma", [SessionCreated()], 0), SessionAppend("alpha", [], 2)])
    assert [len(records) for records in nothing_for_alpha] == [1, 0]
    assert store.verify().ok


def test_appends_of_many_sessions_share_commits(store: PostgresStore) -> None:
    sessions = [f"s{number}" for number in range(16)]
    for session_id in sessions:
        create(store, session_id)
    commits_before = store.writer.commits
    start = threading.Barrier(len(sessions))

    def turns(session_id: str) -> None:
        start.wait(timeout=10)
        for turn in range(1, 21):
            store.append(session_id, [MessageSent(turn=turn, text="t")], turn)

    threads = [threading.Thread(target=turns, args=(session_id,)) for session_id in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    appends = 16 * 20
    assert store.head().position == 16 + appends
    assert store.writer.commits - commits_before < appends / 2  # several sessions per commit
    assert store.verify().ok


# -- the global order ------------------------------------------------------------------


@pytest.mark.parametrize("wait_for_seal", [False, True], ids=["commit-only", "sealed-appends"])
def test_checkpointing_reader_misses_nothing_under_sixteen_writers(
        postgres_url: str, wait_for_seal: bool) -> None:
    """16 writers, each with its own store (own connection, writer and sealer, like 16
    nodes), commit concurrently; a reader that only keeps a checkpoint position must see
    every record exactly once, each session in version order."""
    writers = [open_postgresql_store(postgres_url, pool_size=2, wait_for_seal=wait_for_seal,
                                     seal_interval=0.02) for _ in range(16)]
    reader = open_postgresql_store(postgres_url, seal=False, pool_size=2)
    appends_each = 40
    done = threading.Event()
    seen: list[tuple[str, int]] = []
    positions: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        checkpoint = 1
        try:
            while True:
                finished = done.is_set()  # read once more after the writers finish
                for record in reader.read_all(checkpoint):
                    seen.append((record.session_id, record.version))
                    positions.append(record.position)
                    checkpoint = record.position + 1
                if finished and checkpoint > total:
                    return
                if finished:
                    writers[0].seal_now()
        except BaseException as error:  # reported by the test thread
            errors.append(error)

    def write(number: int) -> None:
        try:
            store = writers[number]
            session_id = f"writer-{number}"
            store.append(session_id, [SessionCreated()], 0)
            for turn in range(1, appends_each):
                store.append(session_id, [MessageSent(turn=turn, text="x" * 200)], turn)
        except BaseException as error:
            errors.append(error)

    total = 16 * appends_each
    reading = threading.Thread(target=read)
    reading.start()
    threads = [threading.Thread(target=write, args=(number,)) for number in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    done.set()
    reading.join(timeout=60)
    try:
        assert not errors, errors
        assert not reading.is_alive()
        assert positions == list(range(1, total + 1))
        assert len(seen) == len(set(seen)) == total
        for number in range(16):
            versions = [version for session, version in seen if session == f"writer-{number}"]
            assert versions == list(range(1, appends_each + 1))
        assert reader.verify().ok
    finally:
        for store in [*writers, reader]:
            store.close()


def test_records_committed_but_not_sealed_are_read_at_position_zero_until_sealed(
        postgres_url: str) -> None:
    with open_postgresql_store(postgres_url, seal=False) as store:
        create(store, "alpha", messages=1)
        assert [record.position for record in store.read_session("alpha")] == [0, 0]
        assert list(store.read_all()) == [] and store.head().position == 0
        assert store.info("alpha") is not None
        head = store.seal_now()
        assert head.position == 2
        assert [record.position for record in store.read_session("alpha")] == [1, 2]
        assert store.verify().ok


# -- subscriptions ---------------------------------------------------------------------


def test_subscription_catches_up_then_follows_live(store: PostgresStore) -> None:
    create(store, "alpha", messages=2)
    with store.subscribe(2) as subscription:
        caught_up = [subscription.get(timeout=5), subscription.get(timeout=5)]
        assert [record.position for record in caught_up if record] == [2, 3]
        assert subscription.get(timeout=0.2) is None
        store.append("alpha", [MessageSent(turn=3, text="live")], 3)
        live = subscription.get(timeout=5)
        assert live is not None and live.position == 4


def test_subscription_on_another_node_wakes_by_notify_and_survives_a_dropped_connection(
        postgres_url: str) -> None:
    """The follower polls only once a minute, so only NOTIFY can bring records in time."""
    writer = open_postgresql_store(postgres_url)
    follower = open_postgresql_store(postgres_url, seal=False)
    try:
        create(writer, "alpha")
        with follower.subscribe(1, poll_interval=60) as subscription:
            first = subscription.get(timeout=5)
            assert first is not None and first.position == 1
            listener = follower.listener
            assert listener is not None and listener.connected.wait(5)
            writer.append("alpha", [MessageSent(turn=1, text="one")], 1)
            assert (record := subscription.get(timeout=5)) is not None and record.position == 2
            pid = listener.backend_pid
            sql(postgres_url, "SELECT pg_terminate_backend(%s)", [pid])
            deadline = time.monotonic() + 10
            while (listener.backend_pid == pid or not listener.connected.is_set()) \
                    and time.monotonic() < deadline:
                listener.connected.wait(0.1)
            assert listener.backend_pid != pid and listener.connections == 2
            writer.append("alpha", [MessageSent(turn=2, text="two")], 2)
            assert (record := subscription.get(timeout=5)) is not None and record.position == 3
    finally:
        follower.close()
        writer.close()


# -- integrity -------------------------------------------------------------------------


def test_head_is_the_last_sealed_position_and_its_hash(store: PostgresStore) -> None:
    assert store.head() == Head(0, bytes(32))
    create(store, "alpha", messages=2)
    position, stored = list(store.read_raw())[-1]
    assert store.head() == Head(3, stored[:32]) and position == 3


def test_verify_of_a_clean_ledger_is_ok_and_matches_lmdb_rules(
        store: PostgresStore, tmp_path: Path) -> None:
    for number in range(3):
        create(store, f"s{number}", messages=3)
    report = store.verify()
    assert report.ok, report.problems
    assert (report.records_checked, report.sessions_checked) == (12, 3)
    assert report.unsealed_records == 0
    # The export of the PostgreSQL ledger imports into LMDB, whose verify agrees.
    export = io.BytesIO()
    assert export_jsonl(store, export) == 12  # type: ignore[arg-type]
    with EventLog(tmp_path / "lmdb") as log:
        imported = import_jsonl(log, export.getvalue().splitlines())
        assert imported.events_imported == 12
        assert log.verify().ok
        assert [record.event for record in log.read_all()] == \
            [record.event for record in store.read_all()]


def test_an_lmdb_export_imports_into_postgresql(store: PostgresStore, tmp_path: Path) -> None:
    with EventLog(tmp_path / "lmdb") as log:
        log.append("alpha", [SessionCreated()], 0)
        log.append("alpha", [MessageSent(turn=1, text="from lmdb")], 1)
        export = io.BytesIO()
        export_jsonl(log, export)
    report = import_jsonl(store, export.getvalue().splitlines())
    assert report.events_imported == 2
    assert [record.event for record in store.read_session("alpha")][1].text == "from lmdb"
    assert store.verify().ok


def test_verbatim_records_for_a_session_with_records_not_sealed_yet_seal_them_then_land(
    postgres_url: str,
) -> None:
    when = [datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)] * 2
    source = open_store("memory:")
    source.append_atomically([SessionAppend("alpha", [SessionCreated()], 0, when[:1])])
    source.append_atomically([SessionAppend("alpha", [MessageSent(turn=1, text="x")], 1,
                                            when[1:])])
    records = [value[HASH_SIZE:] for _, value in source.read_raw()]
    with open_postgresql_store(postgres_url, seal=False) as node:
        node.append_atomically([SessionAppend("alpha", [SessionCreated()], 0, when[:1])])
        assert node.head() == Head(0, GENESIS)  # committed, not sealed: no sealer runs
        assert node.append_verbatim(records[1:]) == source.head()
        assert list(node.read_raw()) == list(source.read_raw())
        assert node.verify(source.head()).ok
    source.close()


def test_a_read_only_store_reads_and_verifies_but_writes_nothing(postgres_url: str) -> None:
    with pytest.raises(LedgerMissingError):
        open_postgresql_store(postgres_url, readonly=True)
    assert sql(postgres_url, "SELECT to_regclass('chatledger.events')") == [(None,)]
    with open_postgresql_store(postgres_url) as writer:
        create(writer, "alpha", messages=1)
        head = writer.head()
    with open_postgresql_store(postgres_url, readonly=True) as reader:
        assert reader.head() == head and reader.verify(head).ok
        with pytest.raises(LedgerError, match="read-only"):
            reader.append("alpha", [MessageSent(turn=2, text="no")], 2)
        with pytest.raises(LedgerError, match="read-only"):
            reader.append_verbatim([b"x"])
    assert sql(postgres_url, "SELECT count(*) FROM chatledger.events") == [(2,)]


def test_the_location_never_shows_the_password() -> None:
    assert "secret" not in redact("postgresql://ledger:secret@db1:5432/chatledger")
    assert redact("postgresql://ledger:secret@db1/c") == "postgresql://ledger:***@db1/c"


def test_a_flipped_byte_is_found_at_its_position(store: PostgresStore) -> None:
    create(store, "alpha", messages=4)
    sql(store.url, "UPDATE chatledger.events SET record = set_byte(record, 40,"
                   " get_byte(record, 40) # 1) WHERE position = 3")
    report = store.verify()
    assert not report.ok
    assert report.first_bad_position == 3
    assert "altered" in (report.reason or "")


def test_a_rewritten_record_with_its_hash_breaks_the_next_link(store: PostgresStore) -> None:
    create(store, "alpha", messages=3)
    # An attacker who also recomputes the stored hash is caught by the following record.
    sql(store.url, "UPDATE chatledger.events SET record = set_byte(record, 40,"
                   " get_byte(record, 40) # 1) WHERE position = 2")
    row = sql(store.url, "SELECT record FROM chatledger.events WHERE position = 2")[0]
    from chatledger.storage import record_hash

    sql(store.url, "UPDATE chatledger.events SET hash = %s WHERE position = 2",
        [record_hash(bytes(row[0]))])  # type: ignore[arg-type]
    report = store.verify()
    assert not report.ok and report.first_bad_position is not None
    assert report.first_bad_position >= 2


def test_truncation_is_caught_against_a_saved_head(store: PostgresStore) -> None:
    create(store, "alpha", messages=4)
    saved = store.head()
    assert saved.position == 5
    # A careful attacker drops the last records and rewinds the head to match.
    kept = sql(store.url, "SELECT hash FROM chatledger.events WHERE position = 3")[0][0]
    sql(store.url, "DELETE FROM chatledger.events WHERE position > 3")
    sql(store.url, "UPDATE chatledger.seal SET position = 3, hash = %s", [kept])
    store.rebuild_index()
    assert store.verify().ok  # consistent on its own...
    report = store.verify(saved)  # ...but not with the head kept before
    assert not report.ok and "truncated" in (report.reason or "")
    assert report.first_bad_position == 4


def test_rebuild_recomputes_a_lost_session_index(store: PostgresStore) -> None:
    create(store, "alpha", messages=2)
    create(store, "beta", messages=1)
    before = sorted(store.sessions(), key=lambda info: info.session_id)
    sql(store.url, "DELETE FROM chatledger.sessions")
    broken = store.verify()
    assert not broken.ok and "missing from the index" in (broken.reason or "")
    assert store.rebuild_index() == 2
    assert sorted(store.sessions(), key=lambda info: info.session_id) == before
    assert store.verify().ok


def test_an_index_position_that_is_not_the_logs_is_found_and_rebuilt(
        store: PostgresStore) -> None:
    """An index entry keeps its session's last position when its batch was sealed inline
    (schema 7), for listings: verify checks it against the log, and rebuild puts it right."""
    create(store, "alpha", messages=2)
    create(store, "beta", messages=1)
    assert {info.session_id: info.last_position for info in store.sessions()} == {
        "alpha": 3, "beta": 5}
    sql(store.url, "UPDATE chatledger.sessions SET position = 1 WHERE session_id = 'beta'")
    report = store.verify()
    assert not report.ok and "entry of 'beta' holds position 1, its last record is at 5" in (
        report.reason or "")
    # An entry without one (its batch left to the sealer) is looked up, and is no damage.
    sql(store.url, "UPDATE chatledger.sessions SET position = NULL WHERE session_id = 'beta'")
    assert {info.session_id: info.last_position for info in store.sessions()} == {
        "alpha": 3, "beta": 5}
    assert store.verify().ok
    sql(store.url, "UPDATE chatledger.sessions SET position = 1 WHERE session_id = 'beta'")
    store.rebuild_index()
    assert {info.session_id: info.last_position for info in store.sessions()} == {
        "alpha": 3, "beta": 5}
    assert store.verify().ok


# -- schema and faults -----------------------------------------------------------------


def test_a_newer_schema_is_refused_with_a_clear_error(postgres_url: str) -> None:
    open_postgresql_store(postgres_url).close()
    sql(postgres_url, "UPDATE chatledger.schema_version SET version = 99")
    with pytest.raises(LedgerError, match="schema 99.*upgrade chatledger"):
        open_postgresql_store(postgres_url)


def test_opening_twice_creates_the_schema_once(postgres_url: str) -> None:
    with open_postgresql_store(postgres_url) as first:
        create(first, "alpha")
    with open_postgresql_store(postgres_url) as second:
        assert second.info("alpha") is not None
    assert sql(postgres_url, "SELECT version FROM chatledger.schema_version") == [(SCHEMA_VERSION,)]


def test_server_down_at_open_is_a_clear_ledger_error(postgres_server) -> None:
    with pytest.raises(LedgerError, match="cannot open the PostgreSQL ledger"):
        open_postgresql_store("postgresql://postgres:secret@127.0.0.1:1/nothing",
                              connect_timeout=2)
    with pytest.raises(LedgerError, match="does not exist") as raised:
        open_postgresql_store(postgres_server.url("no_such_database"), connect_timeout=2)
    assert "secret" not in str(raised.value)


def test_an_exhausted_pool_is_a_bounded_clear_error(postgres_url: str) -> None:
    with open_postgresql_store(postgres_url, pool_size=2, pool_timeout=0.5) as store:
        create(store, "alpha")
        with store._pool.connection(), store._pool.connection():
            started = time.monotonic()
            with pytest.raises(PoolExhaustedError, match="all 2 PostgreSQL connections"):
                store.read_session("alpha")
            assert time.monotonic() - started < 3
        assert len(store.read_session("alpha")) == 1


def test_a_connection_lost_before_commit_is_retried_without_a_duplicate(
        store: PostgresStore) -> None:
    create(store, "alpha")
    killed: list[int] = []

    def kill_backend(stage: str, connection: psycopg.Connection[object]) -> None:
        if stage == "before_commit" and not killed:
            killed.append(connection.info.backend_pid)
            sql(store.url, "SELECT pg_terminate_backend(%s)", [killed[0]])

    store.writer.fault = kill_backend
    records = store.append("alpha", [MessageSent(turn=1, text="once")], 1)
    store.writer.fault = None
    assert killed and records[0].version == 2 and records[0].position == 2
    assert [record.version for record in store.read_session("alpha")] == [1, 2]
    assert store.verify().ok


def test_a_lost_answer_after_commit_is_resolved_by_rereading(store: PostgresStore) -> None:
    create(store, "alpha")
    lost: list[str] = []

    def lose_answer(stage: str, connection: psycopg.Connection[object]) -> None:
        if stage == "after_commit" and not lost:
            lost.append(stage)
            connection.close()
            raise psycopg.OperationalError("the server closed the connection unexpectedly")

    store.writer.fault = lose_answer
    records = store.append("alpha", [MessageSent(turn=1, text="once")], 1)
    store.writer.fault = None
    assert lost and records[0].version == 2 and records[0].position == 2
    texts = [record.event.text for record in store.read_session("alpha")[1:]]
    assert texts == ["once"]  # committed once, answered as committed, never written twice
    assert store.verify().ok


def test_a_lost_seal_is_redone_identically(postgres_url: str) -> None:
    """Seals commit asynchronously because the order is a function of the committed rows:
    undoing every seal (as a crash before its WAL flush would) and sealing again gives the
    same positions, links and hashes."""
    with open_postgresql_store(postgres_url, seal=False) as store:  # no sealer thread
        for number in range(4):
            create(store, f"s{number}", messages=2)
            store.seal_now()
        create(store, "last", messages=1)
        store.seal_now()
        before = list(store.read_raw())
        assert len(before) == 14
        rows = sql(postgres_url, "SELECT session_id, version, record FROM chatledger.events")
        from chatledger.events.codec import decode_envelope

        events = {(row[0], row[1]): bytes(decode_envelope(bytes(row[2])).event)  # type: ignore[arg-type]
                  for row in rows}
        with psycopg.connect(postgres_url) as connection:  # one transaction: undo every seal
            for (session_id, version), event in events.items():
                connection.execute(
                    "UPDATE chatledger.events SET event = %s, position = NULL, hash = NULL,"
                    " record = NULL WHERE session_id = %s AND version = %s",
                    [event, session_id, version])
            connection.execute("UPDATE chatledger.seal SET position = 0, hash = %s,"
                               " sealed_below = '0'", [bytes(32)])
        assert store.head().position == 0
        store.seal_now()
        assert list(store.read_raw()) == before
        assert store.verify().ok


# -- ownership -------------------------------------------------------------------------


NODE_A = LeaseOwner(host="node-a", pid=1, started_at=1.0, token="a")
NODE_B = LeaseOwner(host="node-b", pid=2, started_at=2.0, token="b")


def test_a_node_that_lost_its_lease_to_another_node_can_never_append_again(
        postgres_url: str) -> None:
    node_a = open_postgresql_store(postgres_url)
    node_b = open_postgresql_store(postgres_url)
    try:
        create(node_a, "alpha")
        lease_a = node_a.acquire_lease("alpha", NODE_A, ttl=0.5)
        assert lease_a is not None and lease_a.epoch == 1
        node_a.append("alpha", [MessageSent(turn=1, text="a owns it")], 1, lease=lease_a)
        assert node_b.acquire_lease("alpha", NODE_B, ttl=30) is None  # a's lease is valid
        # Node A is paused past its lease (server clock); node B takes the session over.
        deadline = time.monotonic() + 10
        lease_b = None
        while lease_b is None and time.monotonic() < deadline:
            lease_b = node_b.acquire_lease("alpha", NODE_B, ttl=30)
        assert lease_b is not None and lease_b.epoch == 2
        with pytest.raises(StaleLeaseError, match="epoch 1"):
            node_a.append("alpha", [MessageSent(turn=2, text="a, late")], 2, lease=lease_a)
        assert node_a.renew_lease(lease_a, ttl=30) is None
        node_b.append("alpha", [MessageSent(turn=2, text="b owns it")], 2, lease=lease_b,
                      release_lease=True)
        texts = [record.event.text for record in node_b.read_session("alpha")[1:]]
        assert texts == ["a owns it", "b owns it"]
        lease_a2 = node_a.acquire_lease("alpha", NODE_A, ttl=30)
        assert lease_a2 is not None and lease_a2.epoch == 3  # epochs are never reused
        assert node_b.lease("alpha") == lease_a2
        assert node_a.verify().ok
    finally:
        node_a.close()
        node_b.close()


def test_nodes_racing_for_a_lease_get_one_owner(postgres_url: str) -> None:
    handles = [open_postgresql_store(postgres_url) for _ in range(2)]
    owners = [LeaseOwner(host=f"node-{number}", pid=number, token=str(number))
              for number in range(6)]
    start = threading.Barrier(len(owners))
    granted: list[Lease | None] = [None] * len(owners)

    def race(number: int) -> None:
        start.wait(timeout=30)
        granted[number] = handles[number % 2].acquire_lease("alpha", owners[number], ttl=30)

    threads = [threading.Thread(target=race, args=(number,)) for number in range(len(owners))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        winners = [lease for lease in granted if lease is not None]
        assert len(winners) == 1 and winners[0].epoch == 1
        assert handles[0].lease("alpha") == winners[0]
    finally:
        for handle in handles:
            handle.close()


def test_leases_expire_by_the_servers_clock(store: PostgresStore) -> None:
    server_now = sql(store.url, "SELECT extract(epoch FROM clock_timestamp())::float8")[0][0]
    assert isinstance(server_now, float) and abs(store.clock() - server_now) < 5
    lease = store.acquire_lease("alpha", NODE_A, ttl=30)
    assert lease is not None and lease.held_at(store.clock())
    assert lease.expires_at - store.clock() <= 30


def test_a_schema_1_database_is_migrated_to_the_current_schema(postgres_url: str) -> None:
    with open_postgresql_store(postgres_url) as store:
        create(store, "alpha")
    sql(postgres_url, "DROP TABLE chatledger.leases")
    sql(postgres_url, "UPDATE chatledger.schema_version SET version = 1")
    with open_postgresql_store(postgres_url) as store:
        assert store.info("alpha") is not None
        assert store.acquire_lease("alpha", NODE_A, ttl=5) is not None
    assert sql(postgres_url, "SELECT version FROM chatledger.schema_version") == [
        (SCHEMA_VERSION,)]


def test_schema_2_leases_are_carried_forward_with_their_epochs(postgres_url: str) -> None:
    open_postgresql_store(postgres_url).close()
    sql(postgres_url, "DROP TABLE chatledger.leases")
    sql(postgres_url, "CREATE TABLE chatledger.leases (session_id text PRIMARY KEY,"
                      " owner text NOT NULL, epoch bigint NOT NULL,"
                      " expires_at timestamptz NOT NULL)")
    sql(postgres_url, "INSERT INTO chatledger.leases VALUES"
                      " ('held', 'old-node', 4, now() + interval '1 hour'),"
                      " ('freed', 'old-node', 7, '-infinity')")
    sql(postgres_url, "UPDATE chatledger.schema_version SET version = 2")
    with open_postgresql_store(postgres_url) as store:
        held, freed = store.lease("held"), store.lease("freed")
        assert held is not None and held.epoch == 4 and held.held_at(store.clock())
        assert held.owner == LeaseOwner(host="old-node", pid=0)
        assert store.acquire_lease("held", NODE_A, ttl=5) is None  # still the old node's
        assert freed == Lease(session_id="freed", epoch=7, owner=None, expires_at=0.0)
        taken = store.acquire_lease("freed", NODE_A, ttl=5)
        assert taken is not None and taken.epoch == 8
    assert sql(postgres_url, "SELECT version FROM chatledger.schema_version") == [
        (SCHEMA_VERSION,)]


def test_an_index_behind_its_events_fails_the_append_clearly(store: PostgresStore) -> None:
    create(store, "alpha", messages=1)
    sql(store.url, "DELETE FROM chatledger.sessions")  # the index now says alpha is new
    with pytest.raises(LedgerError, match="rebuild"):
        store.append("alpha", [SessionCreated()], 0)
    store.rebuild_index()
    assert store.append("alpha", [MessageSent(turn=2, text="on")], 2)[0].version == 3
