"""Owners, titles, tags and archive: recorded as events, folded into the info and the index,
set through the Ledger, the SessionManager and the CLI, paginated listings, across a restart
and with a second process writing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from testkit import STANDIN, STANDIN_COMMAND_LINE, open_ledger

from chatledger import SessionManager
from chatledger.catalog import list_sessions
from chatledger.cli import main
from chatledger.errors import InvalidCommandError
from chatledger.events import (
    SessionArchived,
    SessionCreated,
    SessionInfo,
    SessionTagged,
    SessionTitled,
    SessionUnarchived,
)
from chatledger.ledger import Ledger
from chatledger.storage import open_store
from chatledger.storage.lmdb import layout
from chatledger.storage.records import IndexEntry


@pytest.fixture
def ledger(store_location: str) -> Any:
    """A ledger over each store in turn."""
    with open_ledger(store_location) as opened:
        yield opened


def kinds(ledger: Ledger, session_id: str) -> list[type]:
    return [type(recorded.event) for recorded in ledger.events(session_id)]


def test_owner_and_title_given_at_creation_are_recorded_and_folded(ledger: Ledger) -> None:
    info = ledger.create_session(owner="alice", title="  Beam   sizing ")
    assert (info.owner, info.title) == ("alice", "Beam sizing")
    assert kinds(ledger, info.session_id) == [SessionCreated, SessionTitled]
    assert ledger.log.info(info.session_id) == info


def test_title_tags_and_archive_are_events_and_noops_record_nothing(ledger: Ledger) -> None:
    session_id = ledger.create_session().session_id
    ledger.set_title(session_id, "first")
    ledger.set_title(session_id, "first")
    ledger.tag(session_id, add=["bug", "urgent"])
    ledger.tag(session_id, add=["bug"], remove=["missing"])
    info = ledger.tag(session_id, remove=["urgent"], add=["later"])
    assert info.tags == ("bug", "later")
    ledger.archive(session_id)
    ledger.archive(session_id)
    info = ledger.unarchive(session_id)
    assert not info.archived
    assert kinds(ledger, session_id) == [
        SessionCreated, SessionTitled, SessionTagged, SessionTagged, SessionArchived,
        SessionUnarchived,
    ]
    assert ledger.set_title(session_id, "").title is None
    assert ledger.log.info(session_id) == ledger.runtime.live_info(session_id)


@pytest.mark.parametrize("bad", ["", "has space", "+plus", "-minus", "x" * 65])
def test_a_bad_tag_is_refused_and_nothing_is_recorded(ledger: Ledger, bad: str) -> None:
    session_id = ledger.create_session().session_id
    with pytest.raises(InvalidCommandError):
        ledger.tag(session_id, add=[bad])
    assert kinds(ledger, session_id) == [SessionCreated]


def test_auto_title_takes_the_first_message_only_when_the_setting_says_so(
    store_location: str,
) -> None:
    with open_ledger(store_location, auto_title=True) as ledger:
        titled = ledger.create_session().session_id
        ledger.send(titled, "How stiff is a 2 m steel beam under a point load of 5 kN?")
        ledger.send(titled, "and a second question")
        given = ledger.create_session(title="mine").session_id
        ledger.send(given, "a message")
        info = ledger.info(titled)
        assert info is not None and info.title is not None
        assert info.title.startswith("How stiff is a 2 m steel beam")
        assert len(info.title) <= 60
        assert ledger.info(given).title == "mine"  # type: ignore[union-attr]
        sources = [r.event.source for r in ledger.events(titled)
                   if isinstance(r.event, SessionTitled)]
        assert sources == ["first_message"]
    with open_ledger(store_location) as plain:  # the same store, without the setting
        session_id = plain.create_session().session_id
        plain.send(session_id, "no title please")
        assert plain.info(session_id).title is None  # type: ignore[union-attr]


def test_listing_pages_newest_activity_first_and_filters(ledger: Ledger) -> None:
    ids = []
    for number in range(7):
        info = ledger.create_session(owner="alice" if number % 2 == 0 else "bob")
        ids.append(info.session_id)
    ledger.tag(ids[0], add=["keep"])
    ledger.tag(ids[2], add=["keep"])
    ledger.archive(ids[4])
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = ledger.list_sessions(limit=2, cursor=cursor)
        seen.extend(info.session_id for info in page.sessions)
        cursor = page.next_cursor
        if cursor is None:
            break
    unarchived = [sid for sid in ids if sid != ids[4]]
    infos = {sid: ledger.info(sid) for sid in unarchived}
    expected = sorted(unarchived, key=lambda sid: (-infos[sid].last_active.timestamp(), sid))  # type: ignore[union-attr]
    assert seen == expected
    assert seen[:2] == [ids[2], ids[0]]  # tagged last: newest activity
    alice = ledger.list_sessions(owner="alice", tags=["keep"])
    assert {info.session_id for info in alice.sessions} == {ids[0], ids[2]}
    archived = ledger.list_sessions(archived=True)
    assert [info.session_id for info in archived.sessions] == [ids[4]]
    assert len(ledger.list_sessions(archived=None, limit=100).sessions) == 7
    with pytest.raises(InvalidCommandError):
        ledger.list_sessions(cursor="not-a-cursor")


def test_the_manager_sets_labels_and_lists_pages(store_location: str) -> None:
    async def scenario() -> None:
        manager = SessionManager(path=store_location, agent_command=STANDIN)
        try:
            session = await manager.create_session(owner="carol", title="hello")
            await manager.tag(session.session_id, add=["a", "b"], remove=[])
            await manager.set_title(session.session_id, "renamed")
            info = await manager.archive(session.session_id)
            assert (info.owner, info.title, info.tags, info.archived) == (
                "carol", "renamed", ("a", "b"), True)
            assert not (await manager.list_sessions(owner="carol")).sessions
            page = await manager.list_sessions(owner="carol", archived=True)
            assert [i.session_id for i in page.sessions] == [session.session_id]
            await manager.unarchive(session.session_id)
            with pytest.raises(ValueError, match="not found"):
                await manager.set_title("no-such-session", "x")
            # the drop-in surface is unchanged
            old = manager.get_session_info(session.session_id)
            assert old is not None and set(old) == {
                "session_id", "mode", "study_id", "is_alive", "created_at", "last_active",
                "message_count"}
        finally:
            await manager.stop()

    asyncio.run(scenario())


def test_labels_survive_a_restart_and_rebuild(ledger_path: Path) -> None:
    with open_ledger(ledger_path) as ledger:
        info = ledger.create_session(owner="dave", title="t")
        ledger.tag(info.session_id, add=["x"])
        ledger.archive(info.session_id)
    with open_store(str(ledger_path)) as store:
        before = store.info(info.session_id)
        store.rebuild_index()
        assert store.info(info.session_id) == before
        assert store.verify().ok
    with open_ledger(ledger_path) as ledger:
        again = ledger.unarchive(info.session_id)
        assert (again.owner, again.title, again.tags, again.archived) == ("dave", "t", ("x",), False)


def test_an_index_entry_written_before_labels_decodes_with_defaults() -> None:
    old_info = {"session_id": "old", "version": 3, "last_position": 9, "mode": "power",
                "study_id": None, "created_at": None, "last_active": None,
                "message_count": 1, "turn_count": 1, "status": "idle", "last_error": None,
                "total_cost_usd": 0.5, "agent_session_id": None, "open_turn": None,
                "failure_count": 0}
    data = msgspec.msgpack.encode({"info": old_info, "last_hash": b"\x00" * 32})
    entry = layout.decode_index_entry(data)
    assert entry.info == SessionInfo(session_id="old", version=3, last_position=9, mode="power",
                                     message_count=1, turn_count=1, status="idle",
                                     total_cost_usd=0.5)
    assert (entry.info.owner, entry.info.title, entry.info.tags, entry.info.archived) == (
        None, None, (), False)
    assert layout.decode_index_entry(layout.encode_index_entry(entry)) == entry
    assert isinstance(entry, IndexEntry)


def test_a_second_process_labelling_a_live_session_is_not_lost(ledger_path: Path) -> None:
    with open_ledger(ledger_path) as ledger:
        session_id = ledger.create_session().session_id
        ledger.tag(session_id, add=["mine"])  # the actor is live, at its version
        other = subprocess.run(
            [sys.executable, "-m", "chatledger", "--ledger", str(ledger_path), "tag",
             session_id, "+theirs"],
            capture_output=True, timeout=120, env=_cli_env(),
        )
        assert other.returncode == 0, other.stderr
        info = ledger.tag(session_id, add=["again"])  # a stale version: reloaded, decided again
        assert info.tags == ("mine", "theirs", "again")
        assert ledger.set_title(session_id, "after").title == "after"


def _cli_env() -> dict[str, str]:
    import os

    return {**os.environ, "CHATLEDGER_AGENT_COMMAND": STANDIN_COMMAND_LINE}


def test_the_cli_titles_tags_archives_and_pages(ledger_path: Path) -> None:
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(main, ["--ledger", str(ledger_path), *args], env=_cli_env(),
                             catch_exceptions=False)

    first = json.loads(run("new", "--owner", "erin", "--json").stdout)["session_id"]
    second = run("new", "--owner", "erin", "--title", "second").stdout.strip()
    third = run("new").stdout.strip()
    result = run("title", first, "Beam sizing")
    assert result.exit_code == 0 and "title Beam sizing" in result.stdout
    result = run("tag", first, "+bug", "+urgent", "-nothing")
    assert result.exit_code == 0 and "tags bug urgent" in result.stdout
    assert json.loads(run("tag", first, "-urgent", "--json").stdout)["tags"] == ["bug"]
    assert run("tag", first, "bug").exit_code == 2
    assert run("archive", third).exit_code == 0
    shown = run("show", first).stdout
    assert "owner" in shown and "erin" in shown and "Beam sizing" in shown
    listed = json.loads(run("sessions", "--owner", "erin", "--json").stdout)
    assert {item["session_id"] for item in listed} == {first, second}
    assert json.loads(run("sessions", "--tag", "bug", "--json").stdout)[0]["session_id"] == first
    archived = json.loads(run("sessions", "--archived", "--json").stdout)
    assert [item["session_id"] for item in archived] == [third]
    page = run("sessions", "--limit", "1")
    assert page.exit_code == 0
    assert first in page.stdout and second not in page.stdout  # tagged last: newest first
    cursor = page.stdout.strip().splitlines()[-1].removeprefix("next cursor: ")
    rest = run("sessions", "--limit", "1", "--cursor", cursor)
    assert second in rest.stdout and first not in rest.stdout
    assert "next cursor" not in rest.stdout  # the archived one is not listed
    assert run("sessions", "--cursor", "garbage").exit_code == 2
    assert run("archive", third, "--undo").exit_code == 0
    assert len(json.loads(run("sessions", "--json").stdout)) == 3


def test_list_sessions_is_pure_over_infos() -> None:
    infos = [SessionInfo(session_id="~budget"), SessionInfo(session_id="a")]
    assert [i.session_id for i in list_sessions(infos).sessions] == ["a"]
