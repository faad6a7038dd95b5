"""Shared fixtures: a fresh ledger directory and an open event log per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chatledger.storage import EventLog


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
