"""The ledger's files in unusual hands: owned by another user, on a full disk, next to a
planted symlink. Each gets a clear answer and its documented exit code."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from chatledger.cli import main
from chatledger.errors import LedgerFullError
from chatledger.events import MessageSent, SessionCreated
from chatledger.storage import EventLog

NOBODY = 65534
needs_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                                reason="needs root (to act as another user, to mount)")


def chatledger_without_privileges(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as root without capabilities: files of another user are then read with
    their "other" permissions, as that user's neighbour would (the interpreter stays
    reachable, which a real uid switch would not guarantee)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to drop capabilities")
    return subprocess.run(
        [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--",
         sys.executable, "-m", "chatledger", *args],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1"},
    )


@needs_root
def test_a_ledger_owned_by_another_user_can_be_read(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    with EventLog(ledger) as log:
        log.append("theirs", [SessionCreated(), MessageSent(turn=1, text="hi")], 0)
    for path in (ledger, *ledger.iterdir()):
        os.chown(path, NOBODY, NOBODY)
        path.chmod(0o755 if path.is_dir() else 0o644)
    for command in (["sessions"], ["show", "theirs"], ["history", "theirs"], ["verify"],
                    ["events"], ["export"]):
        result = chatledger_without_privileges("--ledger", str(ledger), *command)
        assert result.returncode == 0, (command, result.stderr)
        assert "Traceback" not in result.stderr
    written = chatledger_without_privileges("--ledger", str(ledger), "mode", "theirs", "power")
    assert written.returncode == 4 and "Traceback" not in written.stderr
    assert "readonly=True" not in written.stderr
    assert len(written.stderr.strip().splitlines()) == 1, written.stderr


@contextlib.contextmanager
def tiny_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at `where`."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, timeout=10)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], timeout=10, check=False)


@needs_root
def test_a_full_disk_is_named_with_exit_4_and_what_to_free(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "tiny", "256k") as mount:
        ledger = mount / "ledger"
        with EventLog(ledger) as log:
            log.append("s", [SessionCreated()], 0)
            version = 1
            with pytest.raises(LedgerFullError, match="full") as raised:
                while version < 10_000:
                    log.append("s", [MessageSent(turn=version, text="x" * 3000)], version)
                    version += 1
            assert "free" in str(raised.value)
        with contextlib.suppress(OSError), open(mount / "padding", "wb") as padding:
            while True:  # take whatever room is left
                padding.write(b"\0" * 4096)
                padding.flush()
        source = tmp_path / "source"
        with EventLog(source) as log:
            log.append("big", [SessionCreated()], 0)
            for turn in range(1, 200):
                log.append("big", [MessageSent(turn=turn, text="y" * 3000)], turn)
        export = tmp_path / "big.jsonl"
        export.write_bytes(CliRunner().invoke(main, ["--ledger", str(source), "export"])
                           .stdout_bytes)
        result = CliRunner().invoke(main, ["--ledger", str(ledger), "import", str(export)])
        assert result.exit_code == 4, result.output
        assert "full" in result.output and "free" in result.output
        assert "Input/output error" not in result.output


def test_export_does_not_follow_a_symlink_planted_at_its_temporary_file(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger"
    with EventLog(ledger) as log:
        log.append("s", [SessionCreated()], 0)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    output = tmp_path / "out.jsonl"
    for planted in (tmp_path / ".out.jsonl.partial", tmp_path / "out.jsonl.partial"):
        planted.symlink_to(victim)
    result = CliRunner().invoke(main, ["--ledger", str(ledger), "export", "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious"
    assert output.is_file() and not output.is_symlink() and '"session_id"' in output.read_text()


def test_export_replaces_a_symlink_at_the_output_itself_not_its_target(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    with EventLog(ledger) as log:
        log.append("s", [SessionCreated()], 0)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    output = tmp_path / "out.html"
    output.symlink_to(victim)
    result = CliRunner().invoke(main, ["--ledger", str(ledger), "export", "--format", "html",
                                       "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious"


def test_a_ledger_directory_that_cannot_be_created_is_exit_4_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = CliRunner().invoke(main, ["--ledger", str(tmp_path / "a-file" / "ledger"), "new"])
    assert result.exit_code == 4, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert len(result.output.strip().splitlines()) == 1 and "Not a directory" in result.output


def test_compact_into_a_directory_that_cannot_be_made_is_exit_1(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    with EventLog(ledger) as log:
        log.append("s", [SessionCreated()], 0)
    (tmp_path / "a-file").write_text("")
    result = CliRunner().invoke(main, ["--ledger", str(ledger), "compact", "-o",
                                       str(tmp_path / "a-file" / "copy")])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "cannot write the compacted copy" in result.output
