"""Several backend nodes on one PostgreSQL ledger: node processes (tests/support/ledger_node.py,
each a `chatledger.Ledger` with the stand-in agent) run turns at the same time; every
session's turns are recorded whole and in order, and the shared ledger verifies. A node
killed mid-turn (SIGKILL) loses its session to another node, which closes the cut turn as
interrupted; a node stopped (SIGSTOP) past its lease is fenced off when it resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres_server import PostgresServer
from testkit import STANDIN_COMMAND_LINE, wait_until

from chatledger.events import (
    MessageSent,
    Recorded,
    ResponseReceived,
    RunFailed,
    RunStarted,
    SessionCreated,
)
from chatledger.storage import open_store

if os.environ.get("CI") != "true":  # under CI a missing psycopg fails the import below
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgresql]'")
import psycopg  # noqa: E402,F401

NODE = Path(__file__).parent / "support" / "ledger_node.py"
TURNS = 3
START_TIMEOUT = 60.0
RUN_TIMEOUT = 240.0


@pytest.fixture
def nodes() -> Iterator[list[subprocess.Popen[str]]]:
    """Node processes started by a test, killed (by their pid) if still running after it."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def start_node(nodes: list[subprocess.Popen[str]], location: str, name: str, result: Path,
               session_ids: list[str]) -> subprocess.Popen[str]:
    """Start one node serving `session_ids`; returns once it printed `ready` (it starts its
    turns when it reads a line on stdin)."""
    process = subprocess.Popen(
        [sys.executable, str(NODE), location, name, str(result), str(TURNS), *session_ids],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=result.parent)  # the ledger's signing key and anchors go beside its location
    nodes.append(process)
    assert process.stdout is not None
    line = process.stdout.readline()  # bounded: the node prints `ready` or exits
    assert line.strip() == "ready", process.communicate(timeout=START_TIMEOUT)[1][-2000:]
    return process


def turn_sequence(location: str, session_id: str) -> list[tuple[str, int]]:
    """A session's turn events in version order, as (kind, turn)."""
    kinds = {MessageSent: "message", RunStarted: "run", ResponseReceived: "answer",
             RunFailed: "failed"}
    with open_store(location, create=False) as store:
        return [(kinds[type(recorded.event)], recorded.event.turn)  # type: ignore[attr-defined]
                for recorded in store.read_session(session_id)
                if type(recorded.event) in kinds]


def test_two_nodes_share_one_ledger_and_every_sessions_turns_are_whole_and_in_order(
    postgres_url: str, tmp_path: Path, nodes: list[subprocess.Popen[str]]
) -> None:
    spread = {"node-a": ["a1", "a2", "a3"], "node-b": ["b1", "b2", "b3"]}
    open_store(postgres_url).close()  # the schema, before two nodes race to create it
    processes = {name: start_node(nodes, postgres_url, name, tmp_path / f"{name}.json", ids)
                 for name, ids in spread.items()}
    for process in processes.values():
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=RUN_TIMEOUT)
        assert process.returncode == 0, f"{name}: {stderr[-2000:]}"
    for name, session_ids in spread.items():
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["errors"] == [], result["errors"]
        for session_id in session_ids:
            assert result["turns"][session_id] == [
                f"{name} {session_id} turn {number} [[slow 0.02]]"
                for number in range(1, TURNS + 1)]
            expected = [(kind, number) for number in range(1, TURNS + 1)
                        for kind in ("message", "run", "answer")]
            assert turn_sequence(postgres_url, session_id) == expected, session_id
    with open_store(postgres_url, create=False) as store:
        report = store.verify(store.head())
        assert report.ok, report.problems
        assert report.sessions_checked == 6
        positions = [recorded.position for recorded in store.read_all()]
        assert positions == list(range(1, store.head().position + 1))


def test_two_nodes_serving_one_session_never_overlap_its_turns(
    postgres_url: str, tmp_path: Path, nodes: list[subprocess.Popen[str]]
) -> None:
    open_store(postgres_url).close()
    processes = {name: start_node(nodes, postgres_url, name, tmp_path / f"{name}.json",
                                  ["shared"]) for name in ("node-a", "node-b")}
    for process in processes.values():
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    answered = 0
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=RUN_TIMEOUT)
        assert process.returncode == 0, f"{name}: {stderr[-2000:]}"
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["errors"] == [], result["errors"]
        answered += len(result["turns"]["shared"])
    assert answered == 2 * TURNS
    expected = [(kind, number) for number in range(1, 2 * TURNS + 1)
                for kind in ("message", "run", "answer")]
    assert turn_sequence(postgres_url, "shared") == expected


# -- a node dies or stalls mid-turn (turn_sender.py processes, the stand-in agent) -------------

LEASE_TTL = 2.0
HANDOVER_SLACK = 3.0
"""Beyond the lease's ttl: the waiting node's poll, its reload and closing the cut turn."""
SENDER_BOUND = 90.0


# Runs turn_sender.py as if on another machine: a lease holder on another host cannot be
# seen dead, so its session is taken only once its lease expired (as between real nodes).
ON_ANOTHER_HOST = (
    "import runpy, socket, sys; socket.gethostname = lambda: 'another-node'; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def sender(location: str, session_id: str, messages: list[str], cwd: Path, *,
           another_host: bool = False, settings: dict[str, str] | None = None
           ) -> subprocess.Popen[str]:
    """A node process (tests/support/turn_sender.py) sending `messages` to one session."""
    environment = dict(os.environ)
    environment.update({"CHATLEDGER_AGENT_COMMAND": STANDIN_COMMAND_LINE,
                        "CHATLEDGER_TIMEOUT": "60", "CHATLEDGER_KILL_GRACE": "0.5",
                        **(settings or {})})
    script = [str(NODE.parent / "turn_sender.py"), location, session_id, *messages]
    prefix = ["-c", ON_ANOTHER_HOST] if another_host else []
    return subprocess.Popen([sys.executable, *prefix, *script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment, cwd=cwd)


def run_started(location: str, session_id: str) -> RunStarted:
    """The session's last RunStarted."""
    return [recorded.event for recorded in records_of(location, session_id)
            if isinstance(recorded.event, RunStarted)][-1]


def reports_of(process: subprocess.Popen[str]) -> tuple[list[dict[str, Any]], str]:
    """Wait for a sender (bounded); the JSON line of each turn and its stderr."""
    try:
        out, err = process.communicate(timeout=SENDER_BOUND)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"a node did not finish within {SENDER_BOUND} s: {err[-2000:]}")
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def records_of(location: str, session_id: str) -> list[Recorded]:
    """The session's records as stored now."""
    with open_store(location, create=False) as store:
        return store.read_session(session_id)


def started_runs(location: str, session_id: str) -> int:
    """How many turns of the session have started."""
    return sum(isinstance(recorded.event, RunStarted)
               for recorded in records_of(location, session_id))


def assert_turns_never_overlap(records: list[Recorded]) -> None:
    """No run starts while another is open, and every run is closed."""
    open_turn: int | None = None
    for recorded in records:
        event = recorded.event
        if isinstance(event, RunStarted):
            assert open_turn is None, f"turn {event.turn} started while {open_turn} ran"
            open_turn = event.turn
        elif isinstance(event, (ResponseReceived, RunFailed)):
            assert open_turn == event.turn
            open_turn = None
    assert open_turn is None, f"turn {open_turn} was never closed"


def assert_ledger_verifies(location: str) -> None:
    """The shared ledger verifies clean, its positions 1..N without a gap."""
    with open_store(location, create=False) as store:
        report = store.verify(store.head())
        assert report.ok, report.problems
        assert [r.position for r in store.read_all()] == list(range(1, store.head().position + 1))


@pytest.mark.parametrize("owner_host", ["same-host", "another-host"])
def test_a_node_killed_mid_turn_loses_its_session_to_another_node_which_closes_the_turn(
    postgres_url: str, tmp_path: Path, owner_host: str
) -> None:
    """On one host the dead owner's pid is seen gone (taken at once); from another host its
    lease must expire first (within its ttl)."""
    with open_store(postgres_url) as store:
        store.append("s", [SessionCreated(mode="user")], 0)
    ttl = {"CHATLEDGER_LEASE_TTL": f"{LEASE_TTL:g}"}
    owner = sender(postgres_url, "s", ["long [[slow 60]]"], tmp_path,
                   another_host=owner_host == "another-host", settings=ttl)
    other: subprocess.Popen[str] | None = None
    try:
        assert wait_until(lambda: started_runs(postgres_url, "s") == 1, timeout=60)
        other = sender(postgres_url, "s", ["after"], tmp_path, settings=ttl)
        assert other.stdout is not None
        assert other.stdout.readline().strip() == "ready"
        os.kill(owner.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        owner.wait(timeout=10)
        assert wait_until(lambda: started_runs(postgres_url, "s") == 2, timeout=SENDER_BOUND)
        handover = time.monotonic() - killed_at
        reports, err = reports_of(other)
    finally:
        for process in (owner, other):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
    print(f"takeover after SIGKILL ({owner_host}): {handover:.2f} s")
    assert handover <= LEASE_TTL + HANDOVER_SLACK
    assert [report["ok"] for report in reports] == [True], err[-2000:]
    records = records_of(postgres_url, "s")
    assert_turns_never_overlap(records)
    events = [recorded.event for recorded in records]
    assert [type(event).__name__ for event in events] == [
        "SessionCreated", "MessageSent", "RunStarted", "RunFailed",
        "MessageSent", "RunStarted", "ResponseReceived"]
    assert (events[3].turn, events[3].reason) == (1, "interrupted")
    assert events[6].text == "echo: after"
    first, second = events[2], events[5]
    assert first.host == ("another-node" if owner_host == "another-host"
                          else socket.gethostname())
    assert second.pid == other.pid and second.lease_epoch >= 2
    assert_ledger_verifies(postgres_url)


def test_a_node_stopped_past_its_lease_is_fenced_off_when_it_resumes(
    postgres_url: str, tmp_path: Path
) -> None:
    with open_store(postgres_url) as store:
        store.append("s", [SessionCreated(mode="user")], 0)
    owner = sender(postgres_url, "s", ["long [[slow 3]]"], tmp_path,
                   settings={"CHATLEDGER_LEASE_TTL": "1"})
    try:
        assert wait_until(lambda: started_runs(postgres_url, "s") == 1, timeout=60)
        os.kill(owner.pid, signal.SIGSTOP)
        stopped_epoch = run_started(postgres_url, "s").lease_epoch
        other = sender(postgres_url, "s", ["taken over"], tmp_path,
                       settings={"CHATLEDGER_LEASE_TTL": "1"})
        other_reports, other_err = reports_of(other)
        assert [report["ok"] for report in other_reports] == [True], other_err[-2000:]
        before_resume = [recorded.event for recorded in records_of(postgres_url, "s")]
        os.kill(owner.pid, signal.SIGCONT)
        owner_reports, owner_err = reports_of(owner)
    finally:
        if owner.poll() is None:
            os.kill(owner.pid, signal.SIGCONT)
            owner.kill()
            owner.wait(10)
    assert owner_reports and not owner_reports[0]["ok"], owner_err[-2000:]
    print("the resumed node was told:", owner_reports[0])
    events = [recorded.event for recorded in records_of(postgres_url, "s")]
    assert events == before_resume  # nothing the resumed node tried to write landed
    assert [type(event).__name__ for event in events] == [
        "SessionCreated", "MessageSent", "RunStarted", "RunFailed",
        "MessageSent", "RunStarted", "ResponseReceived"]
    assert events[3].reason == "interrupted"
    assert events[5].lease_epoch > stopped_epoch
    assert events[6].text == "echo: taken over"
    assert_turns_never_overlap(records_of(postgres_url, "s"))
    assert_ledger_verifies(postgres_url)


FENCED_WRITER = """
import sys
from chatledger.events import SessionTitled
from chatledger.storage import open_store
from chatledger.actors.ownership import this_process
with open_store(sys.argv[1]) as store:
    lease = store.acquire_lease("s", this_process("stopped"), 1.0)
    print(lease.epoch, flush=True)
    sys.stdin.readline()
    version = store.version("s")
    try:
        store.append("s", [SessionTitled(title="late")], version, lease=lease)
        print("appended", flush=True)
    except Exception as error:
        print(type(error).__name__, version, flush=True)
"""


def test_a_late_append_after_a_takeover_is_refused_by_the_fence_even_at_the_current_version(
    postgres_url: str, tmp_path: Path
) -> None:
    """The store's own proof: the resumed process appends at the session's current version
    (no version conflict to save us), and only the lease's epoch refuses it."""
    from chatledger.actors.ownership import this_process
    from chatledger.events import SessionTitled

    with open_store(postgres_url) as store:
        store.append("s", [SessionCreated(mode="user")], 0)
    writer = subprocess.Popen([sys.executable, "-c", FENCED_WRITER, postgres_url], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        assert writer.stdout is not None and writer.stdin is not None
        line = writer.stdout.readline()
        assert line.strip().isdigit(), writer.communicate(timeout=30)[1][-2000:]
        stale_epoch = int(line)
        os.kill(writer.pid, signal.SIGSTOP)
        with open_store(postgres_url) as store:
            stale = store.lease("s")
            assert stale is not None and stale.owner is not None
            assert wait_until(lambda: not stale.held_at(store.clock()), timeout=10)
            taken = store.acquire_lease("s", this_process("new-owner"), 30.0)
            assert taken is not None and taken.epoch > stale_epoch
            store.append("s", [SessionTitled(title="new owner")], 1, lease=taken)
        os.kill(writer.pid, signal.SIGCONT)
        writer.stdin.write("go\n")
        writer.stdin.flush()
        out, err = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            os.kill(writer.pid, signal.SIGCONT)
            writer.kill()
            writer.wait(10)
    assert out.split() == ["StaleLeaseError", "2"], err[-2000:]
    texts = [getattr(r.event, "title", None) for r in records_of(postgres_url, "s")]
    assert texts == [None, "new owner"]
    assert_ledger_verifies(postgres_url)


def test_a_node_on_a_host_list_url_skips_a_dead_host_and_runs_its_turns(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    """`postgresql://dead:1,live:port/db?target_session_attrs=read-write`: libpq tries the
    hosts in turn; the node (a whole Ledger: store, leases, signing key) works on the live one."""
    from testkit import open_ledger

    database = postgres_url.rsplit("/", 1)[1]
    url = (f"postgresql://postgres@127.0.0.1:1,127.0.0.1:{postgres_server.port}/{database}"
           "?target_session_attrs=read-write")
    with open_ledger(url) as ledger:
        ledger.resume_session("s")
        outcome = ledger.send("s", "over a host list")
    assert outcome.ok and outcome.text == "echo: over a host list"
    assert_ledger_verifies(url)


def test_the_two_node_example_hands_a_killed_nodes_sessions_over_and_verifies(
    postgres_url: str, tmp_path: Path
) -> None:
    example = Path(__file__).parent.parent / "examples" / "two_nodes.py"
    result = subprocess.run([sys.executable, str(example), postgres_url], capture_output=True,
                            text=True, timeout=SENDER_BOUND, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "node B answered a1: 'echo: still there? (a1)' ok" in result.stdout
    assert "run 2 failed: interrupted" in result.stdout
    assert "5. verify: ok (4 sessions" in result.stdout
