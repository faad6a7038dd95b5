"""Several backend nodes on one PostgreSQL ledger: node processes (tests/support/ledger_node.py,
each a `chatledger.Ledger` with the stand-in agent) run turns at the same time; every
session's turns are recorded whole and in order, and the shared ledger verifies."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatledger.events import MessageSent, ResponseReceived, RunFailed, RunStarted
from chatledger.storage import open_store

pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgresql]'")

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
