"""Every turn ends in the ledger: a turn whose outcome could not be written (the disk was
full) is closed as `RunFailed(not_recorded)` as soon as the store takes writes again, and at
the latest before the session's next turn starts, so no RunStarted is left dangling.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from testkit import open_ledger, wait_until

from chatledger.errors import LedgerFullError
from chatledger.events import Event, ResponseReceived, RunFailed, UnknownEvent
from chatledger.storage import AuditStore, open_store


class FullDisk:
    """A store whose appends of an answer fail with LedgerFullError while `full` is set."""

    def __init__(self, store: AuditStore) -> None:
        self._store = store
        self.full = threading.Event()

    def append(self, session_id: str, events: Iterable[Event | UnknownEvent],
               expected_version: int, **options: Any) -> Any:
        batch = list(events)
        if self.full.is_set() and any(isinstance(event, ResponseReceived) for event in batch):
            raise LedgerFullError("the disk is full")
        return self._store.append(session_id, batch, expected_version, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_an_unwritten_answer_is_closed_as_not_recorded_once_writes_work(
    ledger_path: Path,
) -> None:
    with open_store(ledger_path) as store:
        disk = FullDisk(store)
        with open_ledger(ledger_path, log=disk) as ledger:
            session = ledger.create_session().session_id
            disk.full.set()
            outcome = ledger.send(session, "hello")
            assert not outcome.ok and outcome.reason == "ledger_error"
            disk.full.clear()

            def closed() -> bool:
                return ledger.info(session).open_turn is None

            assert wait_until(closed, timeout=15)
            last = ledger.events(session)[-1].event
    assert isinstance(last, RunFailed)
    assert last.turn == 1 and last.reason == "not_recorded"
    assert "the disk is full" in last.message


def test_the_next_turn_closes_an_unwritten_one_before_it_starts(ledger_path: Path) -> None:
    with open_store(ledger_path) as store:
        disk = FullDisk(store)
        with open_ledger(ledger_path, log=disk) as ledger:
            session = ledger.create_session().session_id
            disk.full.set()
            assert not ledger.send(session, "lost").ok
            disk.full.clear()
            assert ledger.send(session, "kept").ok
            events = [recorded.event for recorded in ledger.events(session)]
    names = [type(event).__name__ for event in events]
    assert names == ["SessionCreated", "MessageSent", "RunStarted", "RunFailed",
                     "MessageSent", "RunStarted", "ResponseReceived"]
    assert isinstance(events[3], RunFailed) and events[3].reason == "not_recorded"
