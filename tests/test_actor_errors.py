"""Errors inside the actors are named for what they are: a run that could not start is
`spawn_failed`, a bug is `internal_error`; a sweep says "another process moved it on" only
when another writer did, and logs anything else as the error it is."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from testkit import open_ledger

from chatledger.actors.messages import RunTicket, SendMessage
from chatledger.actors.runs import RunPool
from chatledger.agent import CancelSwitch, RunOutcome
from chatledger.errors import ConcurrencyError
from chatledger.events import Event, SessionExpired, UnknownEvent
from chatledger.storage import EventLog


def outcome_of(run: Callable[[CancelSwitch], RunOutcome]) -> RunOutcome:
    """Run `run` on a real one-thread pool and return the outcome it reported."""
    pool = RunPool(1)
    reported: list[RunOutcome] = []
    done = threading.Event()
    command = SendMessage(text="hi", canvas_state=None, sink=lambda update: None, ticket=1)
    ticket = RunTicket(session_id="s-1", ticket=1, turn=1, command=command)

    def on_done(finished: RunTicket, outcome: RunOutcome) -> None:
        reported.append(outcome)
        done.set()

    try:
        pool.submit(ticket, run, on_done)
        assert done.wait(10), "the pool never reported the run"
    finally:
        pool.shutdown()
    assert pool.in_flight("s-1") == []
    return reported[0]


def test_a_run_the_system_could_not_start_is_spawn_failed() -> None:
    def run(cancel: CancelSwitch) -> RunOutcome:
        raise BlockingIOError("fork: resource temporarily unavailable")

    outcome = outcome_of(run)
    assert (outcome.ok, outcome.failure_reason) == (False, "spawn_failed")
    assert "could not start the agent" in outcome.message and "fork" in outcome.message


def test_a_bug_while_running_is_internal_error_not_spawn_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def run(cancel: CancelSwitch) -> RunOutcome:
        raise KeyError("a chatledger bug")

    with caplog.at_level(logging.ERROR, logger="chatledger.actors.runs"):
        outcome = outcome_of(run)
    assert (outcome.ok, outcome.failure_reason) == (False, "internal_error")
    assert "KeyError" in outcome.message
    assert any(record.exc_info for record in caplog.records), "the bug was not logged"


def test_a_turn_whose_run_hit_a_bug_is_recorded_as_internal_error(ledger_path: Path) -> None:
    # The turn's run function raises something no spawn raises: a bug, recorded as one.
    with open_ledger(ledger_path) as ledger:
        session_id = ledger.create_session().session_id
        original = ledger.runtime.pool.submit

        def submit(ticket: RunTicket, run: Any, on_done: Any) -> None:
            def broken(cancel: CancelSwitch) -> RunOutcome:
                raise AttributeError("planner and runner disagree")

            original(ticket, broken, on_done)

        ledger.runtime.pool.submit = submit  # type: ignore[method-assign]
        outcome = ledger.send(session_id, "hi")
    assert not outcome.ok and outcome.reason == "internal_error"
    assert outcome.error is not None and "AttributeError" in outcome.error


class ExpiryRefusingLog:
    """An EventLog whose appends of SessionExpired raise `error` (the rest pass through)."""

    def __init__(self, log: EventLog, error: Exception) -> None:
        self._log = log
        self._error = error

    def append(self, session_id: str, events: Iterable[Event | UnknownEvent],
               expected_version: int) -> Any:
        batch = list(events)
        if any(isinstance(event, SessionExpired) for event in batch):
            raise self._error
        return self._log.append(session_id, batch, expected_version)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


@pytest.mark.parametrize(
    ("error", "level", "words"),
    [
        (ConcurrencyError("s", 1, 2), logging.INFO, "another process moved it on"),
        (OSError("disk on fire"), logging.ERROR, "could not expire"),
    ],
    ids=["another writer", "anything else"],
)
def test_a_sweep_names_why_it_did_not_expire_a_session(
    ledger_path: Path, caplog: pytest.LogCaptureFixture, error: Exception, level: int,
    words: str,
) -> None:
    with EventLog(ledger_path) as log:
        refusing = ExpiryRefusingLog(log, error)
        with open_ledger(ledger_path, log=refusing) as ledger:  # type: ignore[arg-type]
            session_id = ledger.create_session().session_id
            assert ledger.passivate(session_id)  # not live: the sweep appends itself
            with caplog.at_level(logging.INFO, logger="chatledger.actors.supervisor"):
                result = ledger.sweep(now=time.time() + 10 * 86400)
            assert result["expired"] == 0
            assert ledger.info(session_id).status == "idle"  # type: ignore[union-attr]
    said = [record for record in caplog.records if session_id in record.getMessage()]
    assert said and said[0].levelno == level and words in said[0].getMessage()
    if not isinstance(error, ConcurrencyError):
        assert "another process moved it on" not in caplog.text
