"""The admin CLI on a PostgreSQL ledger (`--ledger postgresql://...`), through click's
CliRunner against the throwaway cluster: the reading commands, export and import, a turn with
the stand-in agent, and the errors of a server that is down or refuses our password."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from postgres_server import PostgresServer
from testkit import STANDIN_COMMAND_LINE

from chatledger.cli import main
from chatledger.events import MessageSent, ResponseReceived, SessionCreated
from chatledger.storage import open_store

pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgresql]'")


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in tmp_path: the signing key and anchors of a ledger that is not a directory go
    beside its location, relative to the working directory."""
    monkeypatch.chdir(tmp_path)


def chatledger(location: str, *args: str) -> Result:
    """`chatledger --ledger LOCATION ARGS...` in process, with the stand-in agent."""
    return CliRunner().invoke(
        main, ["--ledger", location, *args],
        env={"CHATLEDGER_AGENT_COMMAND": STANDIN_COMMAND_LINE, "CHATLEDGER_TIMEOUT": "60"},
    )


def conversation(location: str) -> None:
    """A session with one turn, written through the store."""
    with open_store(location) as store:
        store.append("sess-1", [SessionCreated(study_id="beam")], 0)
        store.append("sess-1", [MessageSent(turn=1, text="hi"),
                                ResponseReceived(turn=1, text="hello")], 1)


def test_sessions_show_verify_and_stats_read_a_postgresql_ledger(postgres_url: str) -> None:
    conversation(postgres_url)
    listed = chatledger(postgres_url, "sessions", "--json")
    assert listed.exit_code == 0, listed.output
    assert [row["session_id"] for row in json.loads(listed.stdout)] == ["sess-1"]
    shown = chatledger(postgres_url, "show", "sess-1")
    assert shown.exit_code == 0 and "beam" in shown.stdout
    verified = chatledger(postgres_url, "verify")
    assert verified.exit_code == 0, verified.output
    assert "ok: 3 records in 1 session(s)" in verified.stdout
    stats = chatledger(postgres_url, "stats", "--json")
    assert stats.exit_code == 0, stats.output
    document = json.loads(stats.stdout)
    assert document["path"] == postgres_url and document["events"] == 3


def test_an_export_imports_into_another_postgresql_ledger_with_the_same_head(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    conversation(postgres_url)
    export = tmp_path / "ledger.jsonl"
    assert chatledger(postgres_url, "export", "-o", str(export)).exit_code == 0
    other = postgres_server.create_database()
    dry = chatledger(other, "import", "--dry-run", str(export))
    assert dry.exit_code == 0 and "would import 3 events" in dry.stdout, dry.output
    imported = chatledger(other, "import", str(export))
    assert imported.exit_code == 0, imported.output
    assert "positions and hashes kept" in imported.stdout
    with open_store(postgres_url) as source, open_store(other) as copy:
        assert copy.head() == source.head()
        assert list(copy.read_raw()) == list(source.read_raw())


def test_compact_writes_the_postgresql_ledger_into_a_new_lmdb_directory_byte_for_byte(
    postgres_url: str, tmp_path: Path
) -> None:
    conversation(postgres_url)
    copied = chatledger(postgres_url, "compact", "-o", str(tmp_path / "copy"))
    assert copied.exit_code == 0, copied.output
    with open_store(postgres_url) as source, open_store(tmp_path / "copy", create=False) as copy:
        assert list(copy.read_raw()) == list(source.read_raw())
        assert copy.verify(source.head()).ok


def test_a_turn_sent_through_the_cli_is_recorded_in_postgresql(postgres_url: str) -> None:
    created = chatledger(postgres_url, "new", "--study", "beam-1", "--json")
    assert created.exit_code == 0, created.output
    session_id = json.loads(created.stdout)["session_id"]
    sent = chatledger(postgres_url, "send", session_id, "hello there [[echo]]")
    assert sent.exit_code == 0, sent.output
    with open_store(postgres_url, create=False) as store:
        info = store.require_info(session_id)
        assert (info.turn_count, info.study_id) == (1, "beam-1")
        assert store.verify().ok


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("command", [["sessions"], ["verify"], ["stats"], ["export", "-o", "x"]])
def test_a_server_that_is_down_exits_4_with_one_line(command: list[str]) -> None:
    result = chatledger(f"postgresql://ledger@127.0.0.1:{_closed_port()}/chatledger", *command)
    assert result.exit_code == 4
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot open the PostgreSQL ledger")
    assert "127.0.0.1" in lines[0] and "Traceback" not in result.output


def test_wrong_credentials_are_named_without_the_password_and_exit_4(
    postgres_server: PostgresServer,
) -> None:
    database = postgres_server.create_password_database("right0secret")
    right = postgres_server.password_url(database, "right0secret")
    open_store(right).close()
    assert chatledger(right, "sessions").exit_code == 0
    for password in ("wrong0secret", None):
        result = chatledger(postgres_server.password_url(database, password), "sessions")
        assert result.exit_code == 4, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert "wrong0secret" not in lines[0]
        assert ("password authentication failed" in lines[0]
                or "no password supplied" in lines[0]), lines[0]
