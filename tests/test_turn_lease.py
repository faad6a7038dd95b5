"""A turn's lease in this process: taken in the durable commit that records the turn's start
(MessageSent + RunStarted) and let go in the one that records its answer, so a turn is two
commits; a turn whose lease another live process holds records nothing and waits; a grant
that moved between the actor's look and its commit falls back to taking the lease first.
Real LMDB ledgers, the stand-in agent as a real subprocess, real actors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from chatledger import Ledger
from chatledger.actors.ownership import LeaseKeeper
from chatledger.events import MessageSent, ResponseReceived, RunStarted
from chatledger.storage import LeaseOwner, LeaseRequest

STANDIN = f"{sys.executable} -m chatledger.testing.standin"
ELSEWHERE = LeaseOwner(host="another-host.invalid", pid=4242, started_at=1.0, token="x")
"""A holder on another host: never judged dead from here, so its lease is respected."""


def open_ledger(tmp_path: Path, **settings: Any) -> Ledger:
    options: dict[str, Any] = {"agent_command": STANDIN, "kill_grace": 2.0}
    options.update(settings)
    return Ledger(str(tmp_path / "ledger"), **options)


def commits(ledger: Ledger) -> int:
    """How many write transactions the ledger's group-commit writer has committed."""
    return int(ledger.log.store.writer.batches_committed)  # type: ignore[attr-defined]


def test_a_turn_takes_its_lease_in_the_commit_that_records_its_start(tmp_path: Path) -> None:
    with open_ledger(tmp_path, lease_ttl=600) as ledger:  # no renewal commit in between
        session = ledger.create_session().session_id
        assert ledger.send(session, "warm up").ok
        before = commits(ledger)
        answer = ledger.send(session, "one")
        assert answer.ok and answer.text == "echo: one"
        assert commits(ledger) - before == 2  # start + lease, answer + release
        lease = ledger.log.lease(session)
        started = [r.event for r in ledger.events(session) if isinstance(r.event, RunStarted)]
        assert lease is not None and lease.owner is None  # let go with the answer
        assert [event.lease_epoch for event in started] == [1, 2]  # one grant per turn


def test_a_turn_whose_lease_another_process_holds_records_nothing(tmp_path: Path) -> None:
    with open_ledger(tmp_path, turn_wait_timeout=0.5) as ledger:
        session = ledger.create_session().session_id
        version = ledger.log.info(session).version  # type: ignore[union-attr]
        assert ledger.log.acquire_lease(session, ELSEWHERE, ttl=60) is not None
        outcome = ledger.send(session, "blocked", timeout=10)
        assert not outcome.ok and outcome.reason == "session_busy"
        assert ledger.log.info(session).version == version  # type: ignore[union-attr]
        assert not [r for r in ledger.events(session) if isinstance(r.event, MessageSent)]


def test_a_grant_that_moved_before_the_commit_starts_the_turn_the_long_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    looked = LeaseKeeper.grant_in_reach

    def stale(self: LeaseKeeper, session_id: str) -> LeaseRequest | None:
        """The grant as read a moment too early: one epoch behind the record."""
        request = looked(self, session_id)
        if request is None:
            return None
        lease = request.lease
        return LeaseRequest(lease=type(lease)(session_id=lease.session_id,
                                              epoch=lease.epoch - 1, owner=lease.owner),
                            ttl=request.ttl, take_over=request.take_over)

    with open_ledger(tmp_path) as ledger:
        session = ledger.create_session().session_id
        assert ledger.send(session, "one").ok
        monkeypatch.setattr(LeaseKeeper, "grant_in_reach", stale)
        answer = ledger.send(session, "two")
        assert answer.ok and answer.text == "echo: two"
        events = [r.event for r in ledger.events(session)]
        assert [e.turn for e in events if isinstance(e, MessageSent)] == [1, 2]
        assert [e.lease_epoch for e in events if isinstance(e, RunStarted)] == [1, 2]
        assert [e.turn for e in events if isinstance(e, ResponseReceived)] == [1, 2]
