"""Damage x command: whatever happened to the ledger's files, every command answers with its
documented exit code and at most one line of error, never a traceback, and `verify` always
gives a verdict. Each command runs in its own process (a damaged map must not take pytest
down with it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from chatledger.events import MessageSent, SessionCreated
from chatledger.storage import EventLog

PAGE = 4096
SESSION = "damaged-session"


def flip(offset: int, count: int = 16) -> Callable[[Path], None]:
    """Invert `count` bytes at `offset` (negative: from the end) of data.mdb."""

    def damage(ledger: Path) -> None:
        data = bytearray((ledger / "data.mdb").read_bytes())
        start = offset % len(data)
        for index in range(start, min(start + count, len(data))):
            data[index] ^= 0xFF
        (ledger / "data.mdb").write_bytes(bytes(data))

    return damage


def zero_page(page: int) -> Callable[[Path], None]:
    def damage(ledger: Path) -> None:
        data = bytearray((ledger / "data.mdb").read_bytes())
        pages = len(data) // PAGE
        start = (page % pages) * PAGE
        data[start : start + PAGE] = bytes(PAGE)
        (ledger / "data.mdb").write_bytes(bytes(data))

    return damage


def truncate(fraction: float) -> Callable[[Path], None]:
    def damage(ledger: Path) -> None:
        data = (ledger / "data.mdb").read_bytes()
        (ledger / "data.mdb").write_bytes(data[: max(PAGE, int(len(data) * fraction))])

    return damage


BRANCH, LEAF, OVERFLOW = 0x01, 0x02, 0x04


def pages_of_kind(data: bytes, kind: int) -> list[int]:
    """Page numbers whose LMDB header flags (bytes 10-11) mark them as `kind`."""
    found = []
    for page in range(2, len(data) // PAGE):
        flags = int.from_bytes(data[page * PAGE + 10 : page * PAGE + 12], "little")
        if flags & kind and not flags & 0x10:  # not a meta page
            found.append(page)
    return found


def in_page(kind: int, which: int, offset: int, count: int) -> Callable[[Path], None]:
    """Invert `count` bytes at `offset` of the `which`-th page of a kind (branch, leaf)."""

    def damage(ledger: Path) -> None:
        data = bytearray((ledger / "data.mdb").read_bytes())
        pages = pages_of_kind(bytes(data), kind)
        assert pages, f"no page of kind {kind}"
        start = pages[which % len(pages)] * PAGE + offset
        for index in range(start, start + count):
            data[index] ^= 0xFF
        (ledger / "data.mdb").write_bytes(bytes(data))

    return damage


def delete_lock(ledger: Path) -> None:
    (ledger / "lock.mdb").unlink(missing_ok=True)


def both_metas(ledger: Path) -> None:
    zero_page(0)(ledger)
    zero_page(1)(ledger)


DAMAGES: dict[str, Callable[[Path], None]] = {
    "meta0-header": flip(16),
    "meta0-root": flip(80),
    "meta1-root": flip(PAGE + 80),
    "both-metas-zeroed": both_metas,
    "page2-header": flip(2 * PAGE, 16),
    "page3-body": flip(3 * PAGE + 200, 64),
    "page4-zeroed": zero_page(4),
    "middle-page-zeroed": zero_page(-8),
    "last-page-body": flip(-PAGE + 100, 64),
    "last-page-zeroed": zero_page(-1),
    "truncated-half": truncate(0.5),
    "truncated-one-page": truncate(0.0),
    "lock-deleted": delete_lock,
    "branch-flags": in_page(BRANCH, 0, 10, 2),
    "branch-bounds": in_page(BRANCH, 0, 12, 4),
    "branch-pointers": in_page(BRANCH, 0, 16, 8),
    "branch-body": in_page(BRANCH, -1, PAGE - 200, 64),
    "leaf-flags-first": in_page(LEAF, 0, 10, 2),
    "leaf-bounds-first": in_page(LEAF, 0, 12, 4),
    "leaf-pointers-middle": in_page(LEAF, 5, 16, 8),
    "leaf-body-middle": in_page(LEAF, 5, PAGE - 300, 64),
    "leaf-body-last": in_page(LEAF, -1, PAGE - 100, 32),
    "leaf-pgno-last": in_page(LEAF, -1, 0, 8),
}

COMMANDS: dict[str, list[str]] = {
    "sessions": ["sessions"],
    "show": ["show", SESSION],
    "history": ["history", SESSION],
    "events": ["events"],
    "verify": ["verify"],
    "export": ["export"],
    "stats": ["stats"],
    "verify-session": ["verify", SESSION],
    "new": ["new"],
    "mode": ["mode", SESSION, "power"],
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger with enough records to span branch and leaf pages."""
    path = tmp_path_factory.mktemp("pristine") / "ledger"
    with EventLog(path) as log:
        log.append(SESSION, [SessionCreated()], 0)
        for version in range(1, 400):
            log.append(SESSION, [MessageSent(turn=version, text=f"m{version} " * 40)], version)
        for other in range(30):
            log.append(f"other-{other}", [SessionCreated(study_id=f"s{other}")], 0)
    return path


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_every_command_answers_cleanly_on_a_damaged_ledger(
    pristine: Path, tmp_path: Path, damage: str, command: str
) -> None:
    ledger = tmp_path / "ledger"
    shutil.copytree(pristine, ledger)
    DAMAGES[damage](ledger)
    result = subprocess.run(
        [sys.executable, "-m", "chatledger", "--ledger", str(ledger), *COMMANDS[command]],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1", "CHATLEDGER_AGENT_COMMAND": "true"},
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode >= 0, f"killed by signal {-result.returncode}"
    verifying = command.startswith("verify")
    # 6: the output was written, but the ledger failed verification (export, history, show)
    allowed = {0, 1, 4} if verifying else {0, 3, 4, 5, 6}
    assert result.returncode in allowed, (result.returncode, result.stderr)
    if verifying:
        verdict = result.stdout + result.stderr
        assert ("ok:" in verdict or "TAMPERED" in verdict or "damaged" in verdict), verdict
    if result.returncode not in (0, 1):
        lines = result.stderr.strip().splitlines()
        start = "WARNING: " if result.returncode == 6 else "Error: "  # 6: output, then a warning
        assert len(lines) == 1 and lines[0].startswith(start), result.stderr
    if result.returncode == 4:
        assert "damaged" in result.stderr or "restore" in result.stderr, result.stderr
