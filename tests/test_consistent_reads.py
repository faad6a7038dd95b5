"""Consistent reads while another process writes (LMDB): verify checks one snapshot, and a
ledger opens while another process grows its map.

A real writer process appends at full speed; this process verifies (API, parallel verifier,
CLI) and opens the ledger over and over. Every verify must be clean and every open must work.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from chatledger.cli import main
from chatledger.storage import open_store
from chatledger.storage.lmdb import verify as lmdb_verify
from chatledger.storage.lmdb.environment import DEFAULT_MAP_SIZE
from chatledger.storage.verification import VerifyReport

WRITER = textwrap.dedent(
    """
    import sys, time
    from chatledger.events import MessageSent, SessionCreated
    from chatledger.storage import open_store

    path, payload_bytes, max_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    text = "x" * payload_bytes
    sessions = [f"w{index}" for index in range(4)]
    deadline = time.monotonic() + 120
    with open_store(path) as log:
        versions = {}
        for session_id in sessions:
            versions[session_id] = log.append(session_id, [SessionCreated()], 0)[-1].version
        print("ready", flush=True)
        written = 0
        turn = 0
        while written < max_bytes and time.monotonic() < deadline:
            turn += 1
            for session_id in sessions:
                records = log.append(
                    session_id, [MessageSent(turn=turn, text=text)], versions[session_id]
                )
                versions[session_id] = records[-1].version
                written += payload_bytes
    print("done", flush=True)
    """
)


@pytest.fixture
def writer(request: pytest.FixtureRequest, ledger_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process appending to the ledger at full speed (stopped after the test)."""
    payload, limit = getattr(request, "param", (200, 64 * 1024 * 1024))
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(ledger_path), str(payload), str(limit)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready", process.stderr
    yield process
    process.terminate()
    process.communicate(timeout=30)


def still_writing(process: subprocess.Popen[str]) -> bool:
    return process.poll() is None


def test_verify_is_clean_while_another_process_appends(
    ledger_path: Path, writer: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    heads = []
    with open_store(ledger_path) as log:
        for _ in range(20):
            report = log.verify()
            assert report.ok, report.problems
            heads.append(report.head.position)

        def no_fallback(*args: object) -> VerifyReport:
            raise AssertionError("the two-process verifier fell back to the sequential check")

        monkeypatch.setattr(lmdb_verify, "verify_snapshot", no_fallback)
        for _ in range(5):  # the two-process verifier, on its own, with a later helper snapshot
            report = lmdb_verify.verify_log(log.store, parallel=True)  # type: ignore[attr-defined]
            assert report.ok, report.problems
            heads.append(report.head.position)
    assert still_writing(writer)
    assert len(set(heads)) > 1, "the writer did not move the log on during the verifies"


def test_cli_verify_of_the_ledger_and_of_a_session_is_clean_while_another_process_appends(
    ledger_path: Path, writer: subprocess.Popen[str]
) -> None:
    runner = CliRunner()
    for arguments in (["verify"], ["verify", "w1"]) * 3:
        result = runner.invoke(main, ["--ledger", str(ledger_path), *arguments])
        assert result.exit_code == 0, result.output
    assert still_writing(writer)


OPENER = textwrap.dedent(
    """
    import sys
    from chatledger.storage import open_store

    for _ in range(5):  # each open is a fresh environment: nothing else holds the ledger here
        with open_store(sys.argv[1], create=False) as log:
            info, tail = log.latest("w0", 1)
            assert info is not None and tail and log.head().position > 0
    """
)


@pytest.mark.parametrize("writer", [(256 * 1024, 512 * 1024 * 1024)], indirect=True)
def test_a_ledger_opens_while_another_process_grows_its_map(
    ledger_path: Path, writer: subprocess.Popen[str]
) -> None:
    data_file = ledger_path / "data.mdb"
    first_size = data_file.stat().st_size
    for _ in range(20):
        opener = subprocess.run(
            [sys.executable, "-c", OPENER, str(ledger_path)],
            capture_output=True, text=True, timeout=60,
        )
        assert opener.returncode == 0, opener.stderr
        if not still_writing(writer):
            break
    assert data_file.stat().st_size > first_size + 4 * DEFAULT_MAP_SIZE, (
        "the writer did not grow the map through several doublings meanwhile"
    )
