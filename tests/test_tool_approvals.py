"""Tool approvals with the stand-in: a warm user-mode agent's request for a tool outside the
allow-list reaches the caller, is recorded, and the caller's answer (or its absence) is
what the agent hears."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from pathlib import Path
from typing import Any

from chatledger import Ledger, SessionManager
from chatledger.actors.updates import PermissionRequestUpdate
from chatledger.events import PermissionDecided, PermissionRequested, ResponseReceived
from tests.support.claude_harness import wait_until

STANDIN = f"{sys.executable} -m chatledger.testing.standin"


def open_ledger(path: Path, **settings: Any) -> Ledger:
    options: dict[str, Any] = {"agent_command": STANDIN, "warm_agents": True,
                               "tool_approvals": True, "allowed_tools": ("Read",)}
    options.update(settings)
    return Ledger(str(path / "ledger"), **options)


def events_of(ledger: Ledger, session_id: str, kind: type) -> list[Any]:
    return [r.event for r in ledger.events(session_id) if isinstance(r.event, kind)]


def answering(ledger: Ledger, session: str, allow: bool, delay: float = 0.0) -> Any:
    """An on_update that answers each permission request (after `delay`, on a thread)."""
    asked: list[PermissionRequestUpdate] = []

    def on_update(update: Any) -> None:
        if isinstance(update, PermissionRequestUpdate):
            asked.append(update)

            def answer() -> None:
                ledger.decide_permission(session, update.request_id, allow,
                                         message=None if allow else "not that file",
                                         decided_by="alice")

            threading.Timer(delay, answer).start()

    return on_update, asked


def test_an_allowed_request_lets_the_tool_run_and_is_recorded(tmp_path: Path) -> None:
    with open_ledger(tmp_path) as ledger:
        session = ledger.create_session().session_id
        on_update, asked = answering(ledger, session, True)
        outcome = ledger.send(session, "[[write notes.md]]", on_update=on_update)
        assert outcome.text.startswith("I wrote")
        assert [a.tool for a in asked] == ["Write"]
        requested = events_of(ledger, session, PermissionRequested)
        assert [(r.tool, r.request_id) for r in requested] == [("Write", asked[0].request_id)]
        assert requested[0].input["file_path"].endswith("notes.md")
        decided = events_of(ledger, session, PermissionDecided)
        assert [(d.allow, d.decided_by) for d in decided] == [(True, "alice")]
        assert events_of(ledger, session, ResponseReceived)[-1].permission_denials == ()


def test_a_denied_request_reaches_the_agent_with_its_message(tmp_path: Path) -> None:
    with open_ledger(tmp_path) as ledger:
        session = ledger.create_session().session_id
        on_update, _ = answering(ledger, session, False)
        outcome = ledger.send(session, "[[write notes.md]]", on_update=on_update)
        assert outcome.text.startswith("I could not write")
        decided = events_of(ledger, session, PermissionDecided)
        assert [(d.allow, d.message) for d in decided] == [(False, "not that file")]
        denials = events_of(ledger, session, ResponseReceived)[-1].permission_denials
        assert [d["tool_name"] for d in denials] == ["Write"]


def test_the_deadline_pauses_while_the_caller_decides(tmp_path: Path) -> None:
    with open_ledger(tmp_path, timeout=1.0) as ledger:
        session = ledger.create_session().session_id
        on_update, _ = answering(ledger, session, True, delay=1.5)
        outcome = ledger.send(session, "[[write notes.md]]", on_update=on_update)
        assert outcome.ok and outcome.text.startswith("I wrote")


def test_no_decision_within_permission_timeout_denies(tmp_path: Path) -> None:
    with open_ledger(tmp_path, permission_timeout=0.3) as ledger:
        session = ledger.create_session().session_id
        outcome = ledger.send(session, "[[write notes.md]]")
        assert outcome.text.startswith("I could not write")
        decided = events_of(ledger, session, PermissionDecided)
        assert [(d.allow, d.decided_by) for d in decided] == [(False, "chatledger")]


def test_a_consumer_that_leaves_denies(tmp_path: Path) -> None:
    manager = SessionManager(path=str(tmp_path / "ledger"), agent_command=STANDIN,
                             warm_agents=True, tool_approvals=True, allowed_tools="Read")

    async def scenario() -> str:
        session = (await manager.create_session()).session_id
        updates = manager.send_message(session, "[[write notes.md]]")
        async with contextlib.aclosing(updates):
            async for update in updates:
                if update["type"] == "permission_request":
                    assert set(update) == {"type", "request_id", "tool", "input"}
                    break  # the websocket closed
        return session

    session = asyncio.run(scenario())
    ledger_events = lambda: [r.event for r in manager.runtime.events(session)  # noqa: E731
                             if isinstance(r.event, PermissionDecided)]
    decided = wait_until(ledger_events, 10)
    assert [(d.allow, d.decided_by) for d in decided] == [(False, "chatledger")]
    asyncio.run(manager.stop())


def test_without_tool_approvals_the_tool_is_denied_silently(tmp_path: Path) -> None:
    with open_ledger(tmp_path, tool_approvals=False) as ledger:
        session = ledger.create_session().session_id
        outcome = ledger.send(session, "[[write notes.md]]")
        assert outcome.text.startswith("I could not write")
        assert not events_of(ledger, session, PermissionRequested)


class _Answers:
    """The agent side of a desk: what it was told."""

    def __init__(self) -> None:
        self.told: list[tuple[str, bool, Any]] = []

    def answer_permission(self, request_id: str, allow: bool, *, message: str | None = None,
                          updated_input: Any = None) -> bool:
        self.told.append((request_id, allow, updated_input))
        return True


def test_an_allow_sends_the_requested_input_back_unless_the_caller_changes_it() -> None:
    from chatledger.actors.permissions import PermissionDesk

    recorded: list[Any] = []
    desk = PermissionDesk(lambda session, events: recorded.extend(events), timeout=0)
    agent = _Answers()
    tool_input = {"file_path": "notes.txt", "content": "hi"}
    for request_id in ("r1", "r2"):
        desk.request("s", 1, agent, {"request_id": request_id, "request": {
            "tool_name": "Write", "input": tool_input, "tool_use_id": "t"}})
    assert desk.decide("s", "r1", True)
    assert desk.decide("s", "r2", True, updated_input={"file_path": "other.txt"})
    assert agent.told == [("r1", True, tool_input), ("r2", True, {"file_path": "other.txt"})]
    assert [type(e).__name__ for e in recorded] == ["PermissionRequested"] * 2 + [
        "PermissionDecided"] * 2
