"""Shared fixtures: a fresh ledger directory and an open event log per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatledger.storage import EventLog


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--crash-kills N`: how many SIGKILLs the crash harness deals (default 200)."""
    parser.addoption("--crash-kills", type=int, default=None,
                     help="SIGKILLs dealt by tests/test_crash.py (default 200, or "
                          "$CHATLEDGER_CRASH_KILLS)")


def pytest_configure(config: pytest.Config) -> None:
    """Hand --crash-kills to the crash harness (it reads it when it is imported)."""
    kills = config.getoption("--crash-kills", default=None)
    if kills is not None:
        os.environ["CHATLEDGER_CRASH_KILLS"] = str(kills)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    """A path where a new ledger will be created."""
    return tmp_path / "ledger"


@pytest.fixture
def log(ledger_path: Path) -> Iterator[EventLog]:
    """An open event log on a fresh ledger, closed after the test."""
    event_log = EventLog(ledger_path)
    yield event_log
    event_log.close()
