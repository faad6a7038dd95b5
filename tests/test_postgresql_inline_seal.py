"""Appends sealed in their own transaction (`chatledger.append_batch_sealed`, schemas 5-7): a
node that knows the head seals its batch where it commits it, in one round trip; whenever it
cannot know (another node, the sealer or an import moved the head, a row waits for the
sealer, the seal row is taken) its events go in unsealed and the sealer places them, with the
same order and chains either way."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

try:
    import psycopg
except ImportError:  # pragma: no cover - the extra is not installed
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("psycopg is not installed: pip install -e '.[postgresql]'",
                allow_module_level=True)

from writer_batches import appending_twice, record_batches

from chatledger.events import MessageSent, SessionCreated
from chatledger.events.codec import SCHEMA_VERSION as EVENT_SCHEMA_VERSION
from chatledger.events.codec import encode_event
from chatledger.storage import open_store
from chatledger.storage.hashing import HASH_SIZE
from chatledger.storage.postgresql import PostgresStore, open_postgresql_store
from chatledger.storage.postgresql.schema import MIGRATIONS, SCHEMA_VERSION


def unsealed_rows(url: str) -> int:
    """How many committed rows wait for the sealer."""
    with psycopg.connect(url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM chatledger.events WHERE position IS NULL").fetchone()
    assert row is not None
    return int(row[0])


def message(text: str) -> list[MessageSent]:
    """One message event."""
    return [MessageSent(turn=1, text=text)]


@pytest.fixture
def lone_node(postgres_url: str) -> Iterator[PostgresStore]:
    """A store whose sealer thread only wakes when asked (every seal below is inline)."""
    store = open_postgresql_store(postgres_url, seal_interval=3600)
    yield store
    store.close()


def test_a_lone_nodes_appends_come_back_sealed_from_their_own_transaction(
        lone_node: PostgresStore, postgres_url: str) -> None:
    records = []
    for number in range(3):
        records += lone_node.append(f"s{number}", [SessionCreated(mode="user")], 0)
        records += lone_node.append(f"s{number}", message(f"hello {number}"), 1)
    assert [record.position for record in records] == list(range(1, 7))
    assert lone_node.writer.sealed_batches == 6
    assert unsealed_rows(postgres_url) == 0
    assert list(lone_node.read_all()) == records
    assert lone_node.verify().ok
    # The records are LMDB's, byte for byte: a copy made of them has the same head.
    copy = open_store("memory:")
    assert copy.append_verbatim([value[HASH_SIZE:] for _, value in lone_node.read_raw()]
                                ) == lone_node.head()
    assert copy.verify(lone_node.head()).ok
    copy.close()


def test_an_append_never_waits_for_a_seal_row_another_transaction_holds(
        postgres_url: str) -> None:
    store = open_postgresql_store(postgres_url, wait_for_seal=False, seal_interval=3600)
    holder = psycopg.connect(postgres_url)
    try:
        store.append("alpha", [SessionCreated()], 0)
        holder.execute("SELECT position FROM chatledger.seal FOR UPDATE")
        answered: list[int] = []
        appending = threading.Thread(target=lambda: answered.extend(
            record.position for record in store.append("alpha", message("while held"), 1)))
        appending.start()
        appending.join(timeout=10)
        assert not appending.is_alive() and answered == [0]  # committed, not sealed yet
        assert unsealed_rows(postgres_url) == 1
        holder.rollback()
        assert store.seal_now().position == 2
        sealed_before = store.writer.sealed_batches
        assert [record.position for record in store.append("alpha", message("after"), 2)
                ] == [3]
        assert store.writer.sealed_batches == sealed_before + 1  # inline again
        assert store.verify().ok
    finally:
        holder.close()
        store.close()


def test_a_node_whose_head_another_node_moved_seals_under_the_seal_row_then_inline_again(
        postgres_url: str) -> None:
    """Its call finds the head moved and writes nothing; the writer seals the batch in a
    transaction that waits for the seal row, for the head it finds there, and learns it."""
    node_a = open_postgresql_store(postgres_url, seal_interval=3600)
    node_b = open_postgresql_store(postgres_url, seal_interval=3600)
    try:
        positions = [node_a.append("alpha", [SessionCreated()], 0)[0].position]
        inline_b, slow_b = node_b.writer.sealed_batches, node_b.writer.slow_batches
        positions.append(node_b.append("beta", [SessionCreated()], 0)[0].position)
        assert node_b.writer.sealed_batches == inline_b + 1
        assert node_b.writer.slow_batches == slow_b + 1  # its head was stale: under the lock
        assert unsealed_rows(postgres_url) == 0
        positions.append(node_b.append("beta", message("b"), 1)[0].position)
        assert node_b.writer.sealed_batches == inline_b + 2
        assert node_b.writer.slow_batches == slow_b + 1  # it learned the head: in its call
        positions.append(node_a.append("alpha", message("a"), 1)[0].position)
        assert positions == [1, 2, 3, 4]
        assert unsealed_rows(postgres_url) == 0
        assert node_a.verify().ok
        assert [record.version for record in node_a.read_all()] == [1, 1, 2, 2]
    finally:
        node_a.close()
        node_b.close()


def test_while_another_node_seals_a_node_sends_its_batches_straight_to_the_seal_row(
        postgres_url: str) -> None:
    """Once the head has moved since its own last seal, a node seals its next batches under
    the seal row's lock without trying a call that would find it moved; once a seal finds the
    head where it left it, its batches are sealed in their calls again."""
    node_a = open_postgresql_store(postgres_url, seal_interval=3600)
    node_b = open_postgresql_store(postgres_url, seal_interval=3600)
    try:
        node_a.append("alpha", [SessionCreated()], 0)
        node_b.append("beta", [SessionCreated()], 0)  # a stale head: a call, then the lock
        node_a.append("alpha", message("a"), 1)  # the same for node a
        slow_b, locked_b = node_b.writer.slow_batches, node_b.writer.locked_seals
        node_b.append("beta", message("b"), 1)  # node a sealed meanwhile: straight there
        assert (node_b.writer.slow_batches, node_b.writer.locked_seals) == (slow_b, locked_b + 1)
        node_b.append("beta", message("b again"), 2)  # the head was where it left it
        assert node_b.writer.locked_seals == locked_b + 2
        sealed_b = node_b.writer.sealed_batches
        node_b.append("beta", message("b in its call"), 3)
        assert node_b.writer.sealed_batches == sealed_b + 1
        assert (node_b.writer.slow_batches, node_b.writer.locked_seals) == (slow_b, locked_b + 2)
        assert unsealed_rows(postgres_url) == 0
        assert [record.position for record in node_b.read_all()] == list(range(1, 7))
        assert node_b.verify().ok
    finally:
        node_a.close()
        node_b.close()


def test_while_another_node_seals_a_batch_takes_the_callers_the_batch_before_answered(
        postgres_url: str) -> None:
    """Each batch is one turn at the seal row, which the nodes take one after the other: the
    next leader waits for the callers the batch before answered to come back (up to
    `gather_wait`, and only while they are in `write`) and takes them with the others.
    Here a and c are written together while b comes; the first of a and c back leads and
    waits for the other's second append, which the GIL's turns would otherwise leave to a
    batch of its own."""
    node_a = open_postgresql_store(postgres_url, seal_interval=3600)
    node_b = open_postgresql_store(postgres_url, seal_interval=3600)
    writer = node_b.writer
    writer.gather_wait = 30.0  # the test waits for the callers, never for this bound
    first_two = [appending_twice(node_b, session_id) for session_id in "ac"]
    late = threading.Thread(target=lambda: node_b.append("b", message("late"), 1))
    stages: list[str] = []

    def queued(count: int) -> None:
        assert writer.wait_queued(count, 30) and writer.queued() == count

    def choreography(stage: str, connection: object) -> None:
        stages.append(stage)
        if stages == ["before_commit"]:  # the holder's batch: a and c wait behind it
            for thread in first_two:
                thread.start()
            queued(2)
        elif stages == ["before_commit", "after_commit"]:
            node_a.append("alpha", message("meanwhile"), 2)  # another node seals meanwhile
        elif stages.count("before_commit") == 2 and stage == "before_commit":
            late.start()  # a and c are being written: b waits behind them
            queued(1)

    try:
        for session_id in ("holder", "a", "b", "c"):
            node_b.append(session_id, [SessionCreated()], 0)
        node_a.append("alpha", [SessionCreated()], 0)
        node_b.append("holder", message("under the lock"), 1)  # node b finds the head moved
        node_a.append("alpha", message("again"), 1)  # and it moves on
        assert writer._contended
        batches = record_batches(writer)
        writer.fault = choreography
        node_b.append("holder", message("holding"), 2)
        for thread in (*first_two, late):
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in (*first_two, late))
        assert batches == [["holder"], ["a", "c"], ["a", "b", "c"]]
        assert node_b.verify().ok
    finally:
        writer.fault = None
        node_a.close()
        node_b.close()


def test_a_session_whose_last_record_waits_for_the_sealer_is_never_sealed_ahead_of_it(
        postgres_url: str) -> None:
    unsealing = open_postgresql_store(postgres_url, seal=False)  # a node without a sealer
    node = open_postgresql_store(postgres_url, seal_interval=3600)
    try:
        unsealing.append("alpha", [SessionCreated()], 0)
        second = node.append("alpha", message("second"), 1)[0]
        first = node.read_session("alpha")[0]
        assert 0 < first.position < second.position
        sealed_before = node.writer.sealed_batches
        third = node.append("alpha", message("third"), 2)[0]
        assert third.position == second.position + 1
        assert node.writer.sealed_batches == sealed_before + 1
        assert third.prev_session_hash == node.read_session_raw("alpha")[1][1][:HASH_SIZE]
        assert node.verify().ok
    finally:
        unsealing.close()
        node.close()


def test_a_schema_5_ledger_is_migrated_to_6_and_goes_on_sealing_inline(postgres_url: str) -> None:
    """Schema 6 rewrites append_batch_sealed with fewer statements: a ledger that schema 5's
    function wrote goes on from the same head, sealed inline, and verifies whole."""
    with open_postgresql_store(postgres_url, seal_interval=3600) as store:
        store.append("alpha", [SessionCreated()], 0)
    with psycopg.connect(postgres_url) as connection:  # the ledger as schema 5 left it
        connection.execute(MIGRATIONS[5].encode())
        connection.execute("UPDATE chatledger.schema_version SET version = 5")
    with open_postgresql_store(postgres_url, seal_interval=3600) as store:
        # Unknown to this new node, alpha's next append is decided and sealed under its locks
        # and the seal row's; what follows is sealed inline by the new function.
        assert store.append("alpha", message("on schema 5's head"), 1)[0].position == 2
        assert store.append("beta", [SessionCreated()], 0)[0].position == 3
        assert store.append("alpha", message("and on"), 2)[0].position == 4
        assert store.writer.sealed_batches == 3
        assert unsealed_rows(postgres_url) == 0
        assert store.verify().ok
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT version FROM chatledger.schema_version"
                                  ).fetchone() == (SCHEMA_VERSION,)


def _rewind_to_schema_6(url: str) -> None:
    """Put a current ledger back in schema 6's layout, built by its own DDL: the index without
    positions, schema 4's functions (append_batch and seal_store without its settings), then
    schemas 5 and 6 over them."""
    with psycopg.connect(url) as connection:
        connection.execute("ALTER TABLE chatledger.sessions DROP COLUMN position")
        for version in (4, 5, 6):
            connection.execute(MIGRATIONS[version].encode())
        connection.execute("UPDATE chatledger.schema_version SET version = 6")


def test_schema_7_fills_in_the_index_positions_of_a_schema_6_ledger(postgres_url: str) -> None:
    """Schema 7 keeps each session's last position in its index entry when it is known as the
    entry is written: a schema-6 ledger gets them from its sealed rows, an entry whose record
    the sealer places has none (the sealer leaves the index alone) and is looked up, and
    batches sealed inline write theirs."""
    with open_postgresql_store(postgres_url, seal_interval=3600) as store:
        store.append("alpha", [SessionCreated()], 0)
        store.append("alpha", message("sealed on schema 6"), 1)
        store.append("beta", [SessionCreated()], 0)
    _rewind_to_schema_6(postgres_url)
    with psycopg.connect(postgres_url) as connection:  # beta's next event, left to the sealer
        connection.execute(
            "INSERT INTO chatledger.events (session_id, version, recorded_at, schema_version,"
            " event) VALUES ('beta', 2, now(), %s, %s)",
            [EVENT_SCHEMA_VERSION, encode_event(message("unsealed on schema 6")[0])])
    with open_postgresql_store(postgres_url, seal_interval=3600) as store:
        assert positions(postgres_url) == {"alpha": 2, "beta": 3}
        store.rebuild_index()  # beta's entry at version 2, not sealed yet
        assert positions(postgres_url) == {"alpha": 2, "beta": None}
        store.seal_now()
        assert positions(postgres_url) == {"alpha": 2, "beta": None}
        # Unknown to this new node, alpha's next append is decided and sealed under the locks;
        # the one after is sealed in its call; both entries hold their positions.
        assert store.append("alpha", message("on schema 7"), 2)[0].position == 5
        assert positions(postgres_url) == {"alpha": 5, "beta": None}
        assert store.append("alpha", message("and on"), 3)[0].position == 6
        assert positions(postgres_url) == {"alpha": 6, "beta": None}
        assert {info.session_id: info.last_position for info in store.sessions()} == {
            "alpha": 6, "beta": 4}
        assert store.verify().ok
        with psycopg.connect(postgres_url) as connection:
            assert connection.execute("SELECT to_regproc('chatledger.append_batch')"
                                      ).fetchone() == (None,)


def positions(url: str) -> dict[str, int | None]:
    """Each index entry's position, as stored."""
    with psycopg.connect(url) as connection:
        return dict(connection.execute(
            "SELECT session_id, position FROM chatledger.sessions").fetchall())
