"""Full-text search: the FTS5 side index fed from the log, through the Ledger, the manager and
the CLI, correct across a restart, a rebuild and another process's writes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from testkit import STANDIN, STANDIN_COMMAND_LINE, open_ledger

from chatledger import SessionManager
from chatledger.catalog.search import SearchIndex, index_path_for, word_query
from chatledger.cli import main
from chatledger.events import MessageSent, ResponseReceived, SessionCreated
from chatledger.ledger import Ledger
from chatledger.storage import open_store


@pytest.fixture
def ledger(store_location: str) -> Any:
    """A ledger over each store in turn."""
    with open_ledger(store_location) as opened:
        yield opened


def test_search_finds_messages_and_answers_with_session_turn_and_time(ledger: Ledger) -> None:
    alice = ledger.create_session(owner="alice").session_id
    bob = ledger.create_session(owner="bob").session_id
    ledger.send(alice, "what is the deflection of a cantilever")
    ledger.send(bob, "cantilever stiffness please")
    ledger.send(alice, "unrelated words")
    hits = ledger.search("cantilever")
    assert {(hit.session_id, hit.turn) for hit in hits} >= {(alice, 1), (bob, 1)}
    assert {hit.role for hit in hits} == {"user", "assistant"}  # the stand-in echoes
    assert [hit.position for hit in hits] == sorted((hit.position for hit in hits), reverse=True)
    assert all(hit.recorded_at.tzinfo is not None for hit in hits)
    assert {hit.session_id for hit in ledger.search("cantilever", owner="bob")} == {bob}
    assert ledger.search("cantilever deflection")[0].session_id == alice
    assert ledger.search("nowhere-to-be-found") == []
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    assert ledger.search("cantilever", since=future) == []
    assert "[cantilever]" in hits[0].snippet
    ledger.send(bob, "cantilever again, after the index caught up once")
    later = ledger.search("cantilever", owner="bob")  # bob's owner came from an earlier pass
    assert len(later) == 4 and {hit.owner for hit in later} == {"bob"}
    assert len(ledger.search("cantilever", since=hits[0].recorded_at)) >= 3


def test_query_syntax_in_the_text_is_taken_as_words() -> None:
    assert word_query('a "b" OR c*') == '"a" """b""" "OR" "c*"'
    assert word_query("   ") == ""


def test_the_manager_searches(store_location: str) -> None:
    async def scenario() -> None:
        manager = SessionManager(path=store_location, agent_command=STANDIN)
        try:
            session = await manager.create_session(owner="carol")
            async for _ in manager.send_message(session.session_id, "girder torsion"):
                pass
            hits = await manager.search("torsion", owner="carol")
            assert hits and hits[0].session_id == session.session_id
        finally:
            await manager.stop()

    asyncio.run(scenario())


def test_the_index_catches_up_with_another_process_and_survives_a_restart(
    ledger_path: Path,
) -> None:
    with open_ledger(ledger_path) as ledger:
        mine = ledger.create_session().session_id
        ledger.send(mine, "first words about trusses")
        assert len(ledger.search("trusses")) == 2
        other = subprocess.run(
            [sys.executable, "-m", "chatledger", "--ledger", str(ledger_path), "new", "--json"],
            capture_output=True, timeout=120, env=_cli_env(), check=True)
        theirs = json.loads(other.stdout)["session_id"]
        subprocess.run(
            [sys.executable, "-m", "chatledger", "--ledger", str(ledger_path), "send", theirs,
             "trusses from another process"],
            capture_output=True, timeout=120, env=_cli_env(), check=True)
        hits = ledger.search("trusses another")
        assert [hit.session_id for hit in hits] == [theirs, theirs]
        indexed = ledger.runtime.search_index().indexed_position()
        assert indexed == ledger.log.head().position
    index_file = index_path_for(str(ledger_path))
    assert index_file is not None and index_file.is_file()
    with open_ledger(ledger_path) as ledger:  # a restart reads the file, indexes nothing new
        index = ledger.runtime.search_index()
        assert index.indexed_position() == ledger.log.head().position
        assert index.catch_up() == 0
        assert len(ledger.search("trusses")) == 4


def test_an_index_that_no_longer_matches_its_log_is_rebuilt(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    for path, word in ((first, "alpha"), (second, "bravo")):
        with open_store(str(path)) as store:
            store.append("s", [SessionCreated(), MessageSent(turn=1, text=word),
                               ResponseReceived(turn=1, text=f"{word} answer")], 0)
    index_file = tmp_path / "index.sqlite3"
    with open_store(str(first)) as store, SearchIndex(store, index_file) as index:
        assert len(index.search("alpha")) == 2
    with open_store(str(second)) as store, SearchIndex(store, index_file) as index:
        assert index.search("alpha") == []  # same head position, different log: rebuilt
        assert len(index.search("bravo")) == 2
        assert index.rebuild() == 3


def test_deleting_the_index_file_loses_nothing(ledger_path: Path) -> None:
    with open_ledger(ledger_path) as ledger:
        ledger.send(ledger.create_session().session_id, "purlin spacing")
        before = ledger.search("purlin")
    index_file = index_path_for(str(ledger_path))
    assert index_file is not None
    os.remove(index_file)
    with open_ledger(ledger_path) as ledger:
        assert ledger.search("purlin") == before


def _cli_env() -> dict[str, str]:
    return {**os.environ, "CHATLEDGER_AGENT_COMMAND": STANDIN_COMMAND_LINE}


def test_the_cli_searches_with_owner_since_and_json(ledger_path: Path, tmp_path: Path) -> None:
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(main, ["--ledger", str(ledger_path), *args], env=_cli_env(),
                             catch_exceptions=False)

    alice = run("new", "--owner", "alice").stdout.strip()
    bob = run("new", "--owner", "bob").stdout.strip()
    assert run("send", alice, "column buckling load").exit_code == 0
    assert run("send", bob, "column base plate").exit_code == 0
    table = run("search", "column")
    assert table.exit_code == 0 and alice in table.stdout and bob in table.stdout
    lines = run("search", "column", "--owner", "alice", "--json").stdout.splitlines()
    hits = [json.loads(line) for line in lines]
    assert {hit["session_id"] for hit in hits} == {alice}
    assert {hit["role"] for hit in hits} == {"user", "assistant"}
    assert set(hits[0]) >= {"session_id", "turn", "role", "recorded_at", "position", "snippet"}
    assert run("search", "column", "--since", "1h", "--json").stdout.strip()
    assert run("search", "column", "--since", "nonsense").exit_code == 2
    assert run("search", "buckling", "--reindex", "--json").stdout.count("\n") == 2
    moved = tmp_path / "elsewhere.sqlite3"
    env = {**_cli_env(), "CHATLEDGER_SEARCH_PATH": str(moved)}
    result = runner.invoke(main, ["--ledger", str(ledger_path), "search", "plate"], env=env)
    assert result.exit_code == 0 and bob in result.stdout and moved.is_file()
    shutil.rmtree(ledger_path)
    assert run("search", "column").exit_code == 4  # no ledger: the documented exit code
