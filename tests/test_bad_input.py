"""Bad input gets a clear error and damages nothing: ids, huge messages, full disks,
read-only directories, garbage files, newer formats."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import pytest
from testkit import STANDIN, open_ledger

from chatledger import SessionManager
from chatledger.errors import (
    CorruptLedgerError,
    InvalidCommandError,
    InvalidEventError,
    InvalidSessionIdError,
    LedgerError,
    LedgerFullError,
)
from chatledger.events import (
    SCHEMA_VERSION,
    MessageSent,
    RunFailed,
    SessionCreated,
    UnknownEvent,
)
from chatledger.storage import EventLog
from chatledger.storage.lmdb import store as lmdb_store


@contextlib.contextmanager
def tiny_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at `where` (needs root; the test skips otherwise)."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny filesystem needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True, timeout=10,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], timeout=10, check=False)


@pytest.mark.parametrize(
    "session_id",
    ["", "x" * 10_000, "../x", "x/../../y", "nul\x00", "\udcff\udcfe", "C:\\windows",
     "\n", "é" * 129],
)
def test_bad_session_ids_are_refused_with_a_clear_error(log: EventLog, session_id: str) -> None:
    with pytest.raises(InvalidSessionIdError, match="session id"):
        log.append(session_id, [SessionCreated()], 0)
    assert log.head().position == 0 and log.sessions() == []


def test_a_ten_megabyte_message_is_stored_and_read_back(log: EventLog) -> None:
    text = "ü" * (5 * 1024 * 1024)  # 10 MB in UTF-8
    log.append("big", [SessionCreated(), MessageSent(turn=1, text=text)], 0)
    assert log.read_session("big")[1].event.text == text  # type: ignore[union-attr]
    assert log.verify().ok


def test_a_full_disk_raises_ledger_full_and_keeps_what_was_written(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "tiny", "512k") as mount:
        with EventLog(mount / "ledger", map_size=64 * 1024) as log:
            log.append("s", [SessionCreated()], 0)
            version = 1
            with pytest.raises(LedgerFullError, match="full"):
                while version < 10_000:
                    log.append("s", [MessageSent(turn=version, text="x" * 3000)], version)
                    version += 1
            assert log.version("s") == version
            assert log.verify().ok
        with EventLog(mount / "ledger") as reopened:
            assert reopened.version("s") == version and reopened.verify().ok


def test_a_read_only_directory_gets_a_clear_error_and_can_be_read(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "ro", "2m") as mount:
        with EventLog(mount / "ledger") as log:
            log.append("s", [SessionCreated()], 0)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, timeout=10)
        with pytest.raises(LedgerError, match="read-only"):
            EventLog(mount / "ledger")
        with EventLog(mount / "ledger", readonly=True) as reader:
            assert reader.version("s") == 1 and reader.verify().ok


def test_random_garbage_in_data_mdb_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    path.mkdir()
    (path / "data.mdb").write_bytes(os.urandom(64 * 1024))
    with pytest.raises(CorruptLedgerError):
        EventLog(path)


def test_an_empty_data_mdb_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"")
    with pytest.raises(CorruptLedgerError):
        EventLog(path)


def test_a_truncated_data_mdb_is_refused_not_crashed_on(ledger_path: Path) -> None:
    with EventLog(ledger_path) as log:
        log.append("s", [SessionCreated()], 0)
        for version in range(1, 300):
            log.append("s", [MessageSent(turn=version, text="t" * 400)], version)
    data = ledger_path / "data.mdb"
    for keep in (4096, data.stat().st_size // 3):
        copy = ledger_path.parent / f"cut-{keep}"
        copy.mkdir()
        (copy / "data.mdb").write_bytes(data.read_bytes()[:keep])
        with pytest.raises(CorruptLedgerError):
            EventLog(copy)


# -- through the session API: ids, modes, messages, canvas states, studies --------------------



BAD_SESSION_IDS: list[Any] = [
    "", "x" * 10_000, "../x", "nul\x00byte", "\udcff\udcfe", b"\xff\xfe", b"bytes", None, 7,
]


def test_bad_session_ids_are_refused_by_the_ledger_and_the_manager(ledger_path: Path) -> None:
    with open_ledger(ledger_path) as ledger:
        for session_id in BAD_SESSION_IDS[:-2]:  # None and 7: create picks a fresh id / refuses
            if not session_id:
                continue  # an empty id means "make one up" in create_session
            with pytest.raises(InvalidSessionIdError, match="session id"):
                ledger.create_session(session_id)
            with pytest.raises(InvalidSessionIdError):
                ledger.send(session_id, "hi", timeout=10)
        with pytest.raises(InvalidSessionIdError):
            ledger.create_session(7)  # type: ignore[arg-type]
        assert ledger.sessions() == [] and ledger.verify().ok

    async def scenario() -> None:
        manager = SessionManager(path=str(ledger_path), agent_command=STANDIN, timeout=30)
        try:
            for session_id in BAD_SESSION_IDS:
                items = [item async for item in manager.send_message(session_id, "hi")]
                assert items == [{"type": "error", "message": "Session not found"}], session_id
                assert manager.get_session(session_id) is None
                assert manager.get_session_info(session_id) is None
                if session_id:
                    with pytest.raises(ValueError):
                        await manager.create_session(resume_session_id=session_id)
                    with pytest.raises(ValueError):
                        await manager.switch_mode(session_id, "user")
        finally:
            await manager.stop()

    asyncio.run(scenario())
    with EventLog(ledger_path) as log:
        assert log.head().position == 0 and log.verify().ok


@pytest.mark.parametrize("mode", ["root", "", "USER", "power ", ["user"], None, 1])
def test_unknown_modes_are_refused_and_record_nothing(ledger_path: Path, mode: Any) -> None:
    async def scenario() -> None:
        manager = SessionManager(path=str(ledger_path), agent_command=STANDIN, timeout=30)
        try:
            session = await manager.create_session()
            with pytest.raises(ValueError, match="mode"):
                await manager.switch_mode(session.session_id, mode)
            if mode is not None:  # None means "keep the mode" when resuming
                with pytest.raises(ValueError, match="mode"):
                    await manager.create_session(mode=mode)
                with pytest.raises(ValueError, match="mode"):
                    await manager.create_session(mode=mode, resume_session_id=session.session_id)
            info = manager.get_session_info(session.session_id)
            assert info is not None and info["mode"] == "user"
        finally:
            await manager.stop()

    asyncio.run(scenario())
    with EventLog(ledger_path) as log:
        assert log.count() == 1 and log.verify().ok


def _cycle() -> dict[str, Any]:
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    return cycle


@pytest.mark.parametrize(
    "canvas_state",
    [{"bad": object()}, _cycle(), {"n": 2**70}, {"n": -(2**64)}, {"text": "lone \udcff"},
     {("tuple", "key"): 1}, lambda: None, {1j: 2}],
    ids=["object", "cycle", "huge-int", "huge-negative-int", "surrogate", "tuple-key",
         "function", "complex-key"],
)
def test_a_canvas_state_that_cannot_be_stored_is_refused_before_anything_is_recorded(
    ledger_path: Path, canvas_state: Any
) -> None:
    with open_ledger(ledger_path) as ledger:
        session_id = ledger.create_session().session_id
        with pytest.raises(InvalidCommandError, match="canvas_state"):
            ledger.send(session_id, "hi", canvas_state=canvas_state, timeout=10)
        assert len(ledger.events(session_id)) == 1
        assert ledger.send(session_id, "still fine", canvas_state={"ok": [1, 2.5, None]}).ok
        assert ledger.verify().ok


@pytest.mark.parametrize("message", [b"bytes", None, 42, "lone \udcff surrogate", ["a"]],
                         ids=["bytes", "none", "int", "surrogate", "list"])
def test_a_message_that_is_not_valid_text_is_refused(ledger_path: Path, message: Any) -> None:
    with open_ledger(ledger_path) as ledger:
        session_id = ledger.create_session().session_id
        with pytest.raises(InvalidCommandError, match="message"):
            ledger.send(session_id, message, timeout=10)
        assert len(ledger.events(session_id)) == 1 and ledger.verify().ok


@pytest.mark.parametrize("study_id", [123, b"study", "\udcff", ["s"]],
                         ids=["int", "bytes", "surrogate", "list"])
def test_a_study_id_that_is_not_text_is_refused_and_never_damages_the_index(
    ledger_path: Path, study_id: Any
) -> None:
    with open_ledger(ledger_path) as ledger:
        with pytest.raises(InvalidCommandError, match="study_id"):
            ledger.create_session(study_id=study_id)
        session_id = ledger.create_session().session_id
        with pytest.raises(InvalidCommandError, match="study_id"):
            ledger.set_study(session_id, study_id)
        with pytest.raises(InvalidCommandError, match="study_id"):
            ledger.resume_session(session_id, study_id=study_id)
        assert [info.study_id for info in ledger.sessions()] == [None]
        assert ledger.verify().ok


def test_an_event_with_a_field_of_the_wrong_type_is_never_written(log: EventLog) -> None:
    # msgspec does not check types when a Struct is built; the codec checks before storing.
    with pytest.raises(InvalidEventError, match="SessionCreated"):
        log.append("s", [SessionCreated(study_id=123)], 0)  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError):
        log.append("s", [MessageSent(turn=1, text="\udcff")], 0)
    with pytest.raises(InvalidEventError):
        log.append("s", [MessageSent(turn=1, text="x", canvas_state=2**65)], 0)
    assert log.head().position == 0 and log.sessions() == [] and log.verify().ok


def test_a_ten_megabyte_message_goes_through_a_whole_turn(ledger_path: Path) -> None:
    message = "ü" * (5 * 1024 * 1024)  # 10 MB in UTF-8
    with open_ledger(ledger_path, timeout=90) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, message)
        assert outcome.ok, outcome.error
        assert outcome.text == f"echo: {message}"
        events = [r.event for r in ledger.events(session_id)]
        assert isinstance(events[1], MessageSent) and events[1].text == message
        assert ledger.verify().ok


BIG_NUMBER_AGENT = r"""
import sys
sys.stdin.read()
big = 123456789012345678901234567890
print('{"type":"assistant","message":{"id":"m1","content":[{"type":"tool_use","id":"t1",'
      '"name":"mcp__x__apply_canvas_change","input":{"modification":{"n":%d}}}]}}' % big)
print('{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1",'
      '"content":"ok"}]}}')
print('{"type":"result","subtype":"success","is_error":false,"session_id":"s",'
      '"result":"done {\\"modification\\": %d}","usage":{"tokens":%d}}' % (-big, big))
"""


def test_numbers_too_big_to_store_in_agent_output_still_close_the_turn(
    ledger_path: Path, tmp_path: Path
) -> None:
    agent = tmp_path / "big_numbers.py"
    agent.write_text(BIG_NUMBER_AGENT)
    with open_ledger(ledger_path, agent_command=(sys.executable, str(agent))) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "hi")
        assert outcome.ok, outcome.error
        info = ledger.info(session_id)
        assert info is not None and info.open_turn is None and info.status == "idle"
        kinds = [type(r.event).__name__ for r in ledger.events(session_id)]
        assert kinds[-1] == "ResponseReceived" and kinds.count("CanvasModified") == 2
        assert ledger.verify().ok


# -- full maps, newer writers ------------------------------------------------------------------


def test_a_map_with_growth_disabled_raises_ledger_full_and_writes_nothing(
    ledger_path: Path,
) -> None:
    size = 256 * 1024
    with EventLog(ledger_path, map_size=size, max_map_size=size) as log:
        log.append("s", [SessionCreated()], 0)
        version = 1
        with pytest.raises(LedgerFullError, match="maximum size"):
            while version < 10_000:
                log.append("s", [MessageSent(turn=version, text="x" * 3000)], version)
                version += 1
        assert log.version("s") == version and log.verify().ok
        with pytest.raises(LedgerFullError):  # a big append still does not fit
            log.append("s", [MessageSent(turn=version, text="y" * 100_000)], version)
        assert log.version("s") == version and log.map_size() == size
    with EventLog(ledger_path) as grown:  # the default maximum lets it grow again
        grown.append("s", [MessageSent(turn=version, text="y" * 100_000)], version)
        assert grown.version("s") == version + 1 and grown.verify().ok


def test_a_ledger_from_a_newer_storage_format_is_refused_clearly(ledger_path: Path) -> None:
    with EventLog(ledger_path) as log:
        log.append("s", [SessionCreated()], 0)
    environment = lmdb.open(str(ledger_path), max_dbs=8)
    meta = environment.open_db(b"meta")
    with environment.begin(write=True) as txn:
        txn.put(b"format", msgspec.msgpack.encode({"marker": b"chatledger-lmdb", "version": 99}),
                db=meta)
    environment.close()
    for readonly in (False, True):
        with pytest.raises(LedgerError, match="newer chatledger"):
            EventLog(ledger_path, readonly=readonly)


def test_events_from_a_newer_schema_are_kept_and_the_session_goes_on(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = msgspec.msgpack.encode({"type": "reaction_added", "emoji": "+1", "turn": 1})
    newer = UnknownEvent(type="reaction_added", fields={"emoji": "+1", "turn": 1}, raw=raw)
    with monkeypatch.context() as patch:  # as a release with schema 3 would write
        patch.setattr(lmdb_store, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
        with EventLog(ledger_path) as log:
            log.append("s", [SessionCreated(study_id="x"), newer], 0)
    with open_ledger(ledger_path) as ledger:
        records = ledger.events("s")
        assert [r.schema_version for r in records] == [SCHEMA_VERSION + 1] * 2
        assert isinstance(records[0].event, SessionCreated)
        assert isinstance(records[1].event, UnknownEvent) and records[1].event.raw == raw
        assert ledger.verify().ok
        outcome = ledger.send("s", "after a newer writer")
        assert outcome.ok, outcome.error
        assert ledger.info("s").message_count == 2  # type: ignore[union-attr]
        assert ledger.verify().ok
    with EventLog(ledger_path) as log:
        stored = log.read_session("s")[1].event
        assert isinstance(stored, UnknownEvent) and stored.raw == raw


# -- agent output that never ends -------------------------------------------------------------

ENDLESS_AGENTS = {
    "one-endless-line": "while True:\n    out.write(b'x' * 65536)\n",
    "endless-deltas": (
        "line = b'{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_delta\","
        "\"delta\":{\"type\":\"text_delta\",\"text\":\"more \"}}}\\n'\n"
        "while True:\n    out.write(line * 500)\n"
    ),
    "endless-empty-lines": "while True:\n    out.write(b'\\n' * 65536)\n",
}


@pytest.mark.parametrize("body", list(ENDLESS_AGENTS.values()), ids=list(ENDLESS_AGENTS))
def test_never_ending_agent_output_is_cut_off_and_recorded(
    ledger_path: Path, tmp_path: Path, body: str
) -> None:
    agent = tmp_path / "endless.py"
    agent.write_text("import sys\nsys.stdin.read()\nout = sys.stdout.buffer\n" + body)
    with open_ledger(ledger_path, agent_command=(sys.executable, str(agent)),
                     max_output_bytes=2 * 1024 * 1024, timeout=60) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "hi", stream_deltas=True)
        assert not outcome.ok and outcome.reason == "output_too_large"
        info = ledger.info(session_id)
        assert info is not None and info.open_turn is None
        assert ledger.send(session_id, "again").turn == 2  # the session goes on
        assert ledger.verify().ok


def test_an_agent_that_floods_stderr_and_never_exits_times_out_with_a_bounded_tail(
    ledger_path: Path, tmp_path: Path
) -> None:
    agent = tmp_path / "chatty.py"
    agent.write_text("import sys\nsys.stdin.read()\n"
                     "while True:\n    sys.stderr.write('noise ' * 10000 + '\\n')\n")
    with open_ledger(ledger_path, agent_command=(sys.executable, str(agent)),
                     timeout=2) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "hi")
        assert not outcome.ok and outcome.reason == "timeout"
        failed = ledger.events(session_id)[-1].event
        assert isinstance(failed, RunFailed) and 0 < len(failed.stderr_tail) <= 8 * 1024
        assert ledger.verify().ok
