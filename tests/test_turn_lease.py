"""A turn's lease in this process: taken in the durable commit that records the turn's start
(MessageSent + RunStarted) and let go in the one that records its answer, so a turn is two
commits; a turn whose lease another live process holds records nothing and waits; a grant
that moved between the actor's look and its commit falls back to taking the lease first. The
agent hears of a turn only once its start is durable (also when that commit is slow), and a
start that could not be recorded never reaches the agent. Real LMDB ledgers, the stand-in
agent as a real subprocess, real actors."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chatledger import Ledger
from chatledger.actors.ownership import LeaseKeeper
from chatledger.agent.live import LiveAgent
from chatledger.events import MessageSent, ResponseReceived, RunStarted
from chatledger.storage import LeaseOwner, LeaseRequest
from chatledger.storage.lmdb import EventLog

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


def grants_one_epoch_behind() -> Callable[[LeaseKeeper, str], LeaseRequest | None]:
    """`LeaseKeeper.grant_in_reach` reading the grant a moment too early: one epoch behind
    the record."""
    looked = LeaseKeeper.grant_in_reach

    def stale(self: LeaseKeeper, session_id: str) -> LeaseRequest | None:
        request = looked(self, session_id)
        if request is None:
            return None
        lease = request.lease
        return LeaseRequest(lease=type(lease)(session_id=lease.session_id,
                                              epoch=lease.epoch - 1, owner=lease.owner),
                            ttl=request.ttl, take_over=request.take_over)

    return stale


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
    with open_ledger(tmp_path) as ledger:
        session = ledger.create_session().session_id
        assert ledger.send(session, "one").ok
        monkeypatch.setattr(LeaseKeeper, "grant_in_reach", grants_one_epoch_behind())
        answer = ledger.send(session, "two")
        assert answer.ok and answer.text == "echo: two"
        events = [r.event for r in ledger.events(session)]
        assert [e.turn for e in events if isinstance(e, MessageSent)] == [1, 2]
        assert [e.lease_epoch for e in events if isinstance(e, RunStarted)] == [1, 2]
        assert [e.turn for e in events if isinstance(e, ResponseReceived)] == [1, 2]


def watch_user_lines(ledger_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Each user line a live agent is given, as (its text, how many MessageSent of that text
    the ledger held durably at that moment), read through a handle of its own."""
    seen: list[tuple[str, int]] = []
    write = LiveAgent._write

    def watched(self: LiveAgent, message: Any) -> None:
        if message.get("type") == "user":
            text = message["message"]["content"]
            with EventLog(ledger_path, readonly=True) as reader:
                durable = sum(1 for info in reader.sessions()
                              for r in reader.read_session(info.session_id)
                              if isinstance(r.event, MessageSent) and r.event.text in text)
            seen.append((text, durable))
        write(self, message)

    monkeypatch.setattr(LiveAgent, "_write", watched)
    return seen


def slow_commits(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every turn start's commit (taking the lease) takes `seconds` longer."""
    append = EventLog.append_taking_lease

    def slow(self: EventLog, *args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)  # nothing may reach the agent meanwhile
        return append(self, *args, **kwargs)

    monkeypatch.setattr(EventLog, "append_taking_lease", slow)


def test_the_agent_hears_of_a_turn_only_once_its_start_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with open_ledger(tmp_path, warm_agents=True) as ledger:
        session = ledger.create_session().session_id
        assert ledger.send(session, "warm up").ok
        seen = watch_user_lines(tmp_path / "ledger", monkeypatch)
        slow_commits(monkeypatch, 0.3)
        for word in ("alpha", "beta"):
            assert ledger.send(session, word).text == f"echo: {word}"
        assert [(text.rsplit(maxsplit=1)[-1], durable) for text, durable in seen] == [
            ("alpha", 1), ("beta", 1)]


def test_a_run_whose_start_was_not_recorded_never_reaches_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with open_ledger(tmp_path, warm_agents=True) as ledger:
        session = ledger.create_session().session_id
        assert ledger.send(session, "warm up").ok
        seen = watch_user_lines(tmp_path / "ledger", monkeypatch)
        slow_commits(monkeypatch, 0.1)
        monkeypatch.setattr(LeaseKeeper, "grant_in_reach", grants_one_epoch_behind())
        assert ledger.send(session, "gamma").text == "echo: gamma"
        assert [durable for _, durable in seen] == [1]  # once, after the long way's commit
