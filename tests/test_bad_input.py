"""Bad input gets a clear error and damages nothing: ids, huge messages, full disks,
read-only directories, garbage files, newer formats."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatledger.errors import (
    CorruptLedgerError,
    InvalidSessionIdError,
    LedgerError,
    LedgerFullError,
)
from chatledger.events import MessageSent, SessionCreated
from chatledger.storage import EventLog


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
