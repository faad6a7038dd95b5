"""Shared fixtures: a fresh ledger directory, an open event log, a location of each store,
the throwaway PostgreSQL cluster (`postgres_server`) and a fresh database on it (`postgres_url`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_server import postgres_server, postgres_url  # noqa: F401  (fixtures)
from stores import STORE_LOCATIONS

from chatledger.storage import EventLog, forget_memory_store


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


@pytest.fixture(params=sorted(STORE_LOCATIONS), ids=lambda name: f"store={name}")
def store_location(request: pytest.FixtureRequest, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh location of each store in turn (memory, LMDB, PostgreSQL), for tests that
    run over any. The test runs in its tmp_path: a ledger that is not a directory keeps its
    signing key and anchors beside its location, relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    location = STORE_LOCATIONS[request.param](request)
    yield location
    if location.startswith("memory:"):
        forget_memory_store(location.removeprefix("memory:"))
