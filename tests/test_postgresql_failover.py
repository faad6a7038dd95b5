"""A synchronous standby promoted after its primary was SIGKILLed under load: node processes
append through a multi-host URL (`target_session_attrs=read-write`); the test kills the
primary's postmaster by its pid and promotes the standby. With bare stores
(tests/support/failover_node.py): every acknowledged append is on the promoted server with
its content and position, the ledger verifies clean, appends and subscriptions carry on
without a restart. With whole Ledger nodes (tests/support/ledger_node.py) running turns: no
turn is lost. With no primary coming back: a clear error within the bound."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

if os.environ.get("CI") != "true":  # under CI a missing psycopg fails the import below
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgresql]'")
import psycopg  # noqa: E402
from postgres_server import (  # noqa: E402
    PostgresServer,
    PostgresUnavailable,
    multi_host_url,
)
from testkit import wait_until  # noqa: E402

from chatledger.events import (  # noqa: E402
    ResponseReceived,
    RunStarted,
    SessionCreated,
    SessionTitled,
)
from chatledger.storage import open_store  # noqa: E402
from chatledger.storage.postgresql import (  # noqa: E402
    ConnectionLostError,
    open_postgresql_store,
)

NODE = Path(__file__).parent / "support" / "failover_node.py"
NODES = 2
SESSIONS_PER_NODE = 4
LOAD_BEFORE_KILL = 2.0
PROMOTION_DELAY = 2.0
"""How long the primary stays dead before the standby is promoted (an operator's or a
failover manager's reaction time): the nodes must ride it out within `reconnect_timeout`."""
ACKS_AFTER_PROMOTION = 20
"""Each node must acknowledge this many appends on the new primary."""
BOUND = 60.0


class Node:
    """A failover_node.py process and the lines it printed (read on a thread)."""

    def __init__(self, url: str, name: str, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(NODE), url, name, str(SESSIONS_PER_NODE)], text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
        self.acks: list[tuple[str, int, str, int, float]] = []
        self.done: dict[str, object] | None = None
        self.ready = threading.Event()
        self.finished = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind == "ready":
                self.ready.set()
            elif kind == "ack":
                session_id, version, title, position, at = rest.split()
                self.acks.append((session_id, int(version), title, int(position), float(at)))
            elif kind == "done":
                self.done = json.loads(rest)
        self.finished.set()

    def acks_after(self, moment: float) -> int:
        """How many appends it acknowledged after `moment` (time.monotonic)."""
        return sum(1 for ack in list(self.acks) if ack[4] > moment)

    def stop(self) -> str:
        """Tell it to stop (bounded); its stderr."""
        assert self.process.stdin is not None
        self.process.stdin.write("stop\n")
        self.process.stdin.flush()
        try:
            self.process.wait(BOUND)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)
        self.finished.wait(10)
        assert self.process.stderr is not None
        return self.process.stderr.read()


def new_server() -> PostgresServer:
    """A cluster of the test's own (it will be killed), not started yet."""
    try:
        return PostgresServer()
    except PostgresUnavailable as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true: {error}")
        pytest.skip(str(error))


@pytest.fixture
def primary_and_standby() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    """A primary with a synchronous streaming standby, both stopped after the test."""
    primary = new_server()
    primary.start()
    standby: PostgresServer | None = None
    try:
        standby = primary.start_standby()
        primary.require_synchronous_standby()
        yield primary, standby
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()


def test_a_promoted_synchronous_standby_has_every_acknowledged_append_and_nodes_carry_on(
    primary_and_standby: tuple[PostgresServer, PostgresServer], tmp_path: Path
) -> None:
    primary, standby = primary_and_standby
    database = f"failover_{uuid.uuid4().hex[:8]}"

    with psycopg.connect(primary.url(), autocommit=True, connect_timeout=10) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    url = multi_host_url(database, primary, standby)
    open_store(url).close()  # the schema, before the nodes race to create it
    nodes = [Node(url, f"n{number}", tmp_path) for number in range(NODES)]
    try:
        for node in nodes:
            assert node.ready.wait(BOUND), node.process.stderr
        started = time.monotonic()
        assert wait_until(lambda: all(node.acks_after(started) >= 10 for node in nodes), BOUND)
        time.sleep(LOAD_BEFORE_KILL)  # load for a while: appends in flight when it dies
        killed_at = time.monotonic()
        primary.kill_postmaster()
        time.sleep(PROMOTION_DELAY)  # the outage itself, not an ordering of threads
        standby.promote()
        promoted_at = time.monotonic()
        assert wait_until(lambda: all(node.acks_after(promoted_at) >= ACKS_AFTER_PROMOTION
                                      for node in nodes), BOUND), [len(n.acks) for n in nodes]
        first_ack_after = min(ack[4] for node in nodes for ack in node.acks
                              if ack[4] > promoted_at)
        errors = [node.stop() for node in nodes]
    finally:
        for node in nodes:
            if node.process.poll() is None:
                node.process.kill()
                node.process.wait(10)
    acknowledged = [ack for node in nodes for ack in node.acks]
    print(f"\nfailover: promoted {promoted_at - killed_at:.2f} s after the kill, first append "
          f"acknowledged {first_ack_after - promoted_at:.2f} s after the promotion; "
          f"{len(acknowledged)} acknowledged appends checked; "
          f"{[node.done for node in nodes]}")
    print([(ack[0], ack[1], round(ack[4] - killed_at, 3)) for ack in acknowledged if not ack[3]])
    (tmp_path.parent / "failover-stderr.txt").write_text("".join(errors))
    with open_store(standby.url(database), create=False) as store:
        for session_id, version, title, position, _ in acknowledged:
            records = store.read_session(session_id, version)
            assert records and records[0].version == version, (session_id, version)
            assert records[0].event.title == title  # type: ignore[union-attr]
            assert records[0].position == position
        report = store.verify(store.head())
        assert report.ok, report.problems
        assert report.unsealed_records == 0
        head = store.head().position
        sessions = {info.session_id: info.version for info in store.sessions()}
    assert sum(sessions.values()) == head  # no event written twice, none lost from the index
    for node in nodes:  # its subscription followed the new primary's seals, live
        assert node.done is not None
        last_acknowledged = max(ack[3] for ack in node.acks)
        assert node.done["seen"]["position"] >= last_acknowledged  # type: ignore[index]
        assert node.done["listener_connections"] >= 2  # it listens on the new primary


LEDGER_NODE = Path(__file__).parent / "support" / "ledger_node.py"
LEDGER_TURNS = 8


def test_ledger_nodes_running_turns_ride_out_a_failover_and_lose_no_turn(
    primary_and_standby: tuple[PostgresServer, PostgresServer], tmp_path: Path
) -> None:
    """Whole `Ledger` nodes (actors, leases renewed in the background, the stand-in agent)
    running turns while the primary dies and the standby is promoted: every turn is
    answered and recorded whole, in order, on the promoted server."""
    primary, standby = primary_and_standby
    database = f"ledgers_{uuid.uuid4().hex[:8]}"

    with psycopg.connect(primary.url(), autocommit=True, connect_timeout=10) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    url = multi_host_url(database, primary, standby)
    open_store(url).close()
    spread = {"node-a": ["a1", "a2"], "node-b": ["b1", "b2"]}
    processes: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, session_ids in spread.items():
            processes[name] = subprocess.Popen(
                [sys.executable, str(LEDGER_NODE), url, name, str(tmp_path / f"{name}.json"),
                 str(LEDGER_TURNS), *session_ids], text=True, cwd=tmp_path,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for process in processes.values():
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        for process in processes.values():
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        assert wait_until(lambda: _runs_started(url) >= 6, BOUND), "the turns did not start"
        primary.kill_postmaster()
        time.sleep(PROMOTION_DELAY)  # the outage itself, not an ordering of threads
        standby.promote()
        for name, process in processes.items():
            _, stderr = process.communicate(timeout=BOUND)
            assert process.returncode == 0, f"{name}: {stderr[-2000:]}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
    with open_store(standby.url(database), create=False) as store:
        for name, session_ids in spread.items():
            result = json.loads((tmp_path / f"{name}.json").read_text())
            assert result["errors"] == [], result["errors"]
            for session_id in session_ids:
                texts = [f"{name} {session_id} turn {number} [[slow 0.02]]"
                         for number in range(1, LEDGER_TURNS + 1)]
                assert result["turns"][session_id] == texts
                answers = [recorded.event.text for recorded in store.read_session(session_id)
                           if isinstance(recorded.event, ResponseReceived)]
                assert answers == [f"echo: {text.split(' [[')[0]}" for text in texts]
        report = store.verify(store.head())
        assert report.ok, report.problems


def _runs_started(url: str) -> int:
    with open_store(url, create=False) as store:
        return sum(isinstance(recorded.event, RunStarted) for recorded in store.read_all())


def test_when_no_server_comes_back_appends_and_reads_fail_within_the_bound_saying_so(
    primary_and_standby: tuple[PostgresServer, PostgresServer],
) -> None:
    """The primary dies and nobody promotes the standby (it stays read-only): the store
    keeps trying for `reconnect_timeout`, then says what is wrong; nothing is written."""
    primary, standby = primary_and_standby
    url = multi_host_url("postgres", primary, standby)
    reconnect = 2.0
    with open_postgresql_store(url, reconnect_timeout=reconnect, pool_timeout=1.0,
                               connect_timeout=1.0) as store:
        store.append("s", [SessionCreated(mode="user")], 0)
        primary.kill_postmaster()
        for attempt in (lambda: store.append("s", [SessionTitled(title="lost")], 1),
                        lambda: store.version("s")):
            started = time.monotonic()
            with pytest.raises(ConnectionLostError) as raised:
                attempt()
            took = time.monotonic() - started
            assert reconnect <= took <= reconnect + 6, took  # bounded: deadline + one wait
            assert "PostgreSQL" in str(raised.value)
            print(f"\n{type(raised.value).__name__} after {took:.1f} s: {raised.value}")
        standby.promote()
        assert store.version("s") == 1  # the same store carries on once a primary is back
        assert store.append("s", [SessionTitled(title="kept")], 1)[0].position == 2


def test_every_connection_of_a_node_cut_at_once_costs_its_callers_nothing(
    postgres_url: str,
) -> None:
    """The server ends every backend of the store (what a restart or failover does to a
    node): reads, appends and a live subscription go on, on new connections."""

    with open_postgresql_store(postgres_url, pool_size=4) as store:
        store.append("s", [SessionCreated(mode="user")], 0)
        with contextlib.ExitStack() as held:  # fill the pool with idle connections
            for _ in range(4):
                held.enter_context(store._pool.connection())
        subscription = store.subscribe(1)
        assert subscription.get(timeout=10) is not None
        assert store.listener is not None and store.listener.connected.wait(10)
        listening = store.listener.connections
        database = postgres_url.rsplit("/", 1)[1]
        with psycopg.connect(postgres_url, autocommit=True, connect_timeout=10) as admin:
            ended = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND application_name = 'chatledger'"
                " AND pid <> pg_backend_pid()", [database]).fetchone()
        assert ended is not None and ended[0] >= 2
        assert [r.version for r in store.read_session("s")] == [1]
        assert store.append("s", [SessionTitled(title="after")], 1)[0].position == 2
        recorded = subscription.get(timeout=10)
        assert recorded is not None and recorded.position == 2
        assert wait_until(lambda: store.listener is not None
                          and store.listener.connections > listening, 10)
        subscription.close()
