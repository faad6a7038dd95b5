"""Tool approvals on cold runs (one agent process per turn), with the stand-in: the turn runs
with `--input-format stream-json --permission-prompt-tool stdio`, its stdin open for the
answers; requests go through the same PermissionDesk and updates as warm ones."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chatledger import Ledger, SessionManager
from chatledger.actors.updates import PermissionRequestUpdate
from chatledger.agent import RunSpec, run_turn
from chatledger.agent.control import PermissionAnswerer
from chatledger.agent.dialects import STANDIN as STANDIN_DIALECT
from chatledger.agent.dialects.claude import build_argv
from chatledger.events import (
    PermissionDecided,
    PermissionRequested,
    ResponseReceived,
    RunFailed,
    RunStarted,
)
from tests.support.claude_harness import wait_until

STANDIN = f"{sys.executable} -m chatledger.testing.standin"
STANDIN_ARGV = (sys.executable, "-m", "chatledger.testing.standin")


def open_ledger(path: Path, **settings: Any) -> Ledger:
    options: dict[str, Any] = {"agent_command": STANDIN, "tool_approvals": True,
                               "allowed_tools": ("Read",)}
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
            threading.Timer(delay, lambda: ledger.decide_permission(
                session, update.request_id, allow,
                message=None if allow else "not that file", decided_by="alice")).start()

    return on_update, asked


def test_a_cold_run_asks_the_caller_and_an_allowed_tool_runs(tmp_path: Path) -> None:
    with open_ledger(tmp_path) as ledger:
        session = ledger.create_session().session_id
        on_update, asked = answering(ledger, session, True)
        outcome = ledger.send(session, "[[write notes.md]]", on_update=on_update)
        assert outcome.ok and outcome.text.startswith("I wrote")
        argv = events_of(ledger, session, RunStarted)[0].argv
        assert "--permission-prompt-tool" in argv and "--input-format" in argv
        assert [a.tool for a in asked] == ["Write"]
        requested = events_of(ledger, session, PermissionRequested)
        assert [r.request_id for r in requested] == [asked[0].request_id]
        decided = events_of(ledger, session, PermissionDecided)
        assert [(d.allow, d.decided_by) for d in decided] == [(True, "alice")]


def test_a_cold_denial_reaches_the_agent_and_is_listed(tmp_path: Path) -> None:
    with open_ledger(tmp_path) as ledger:
        session = ledger.create_session().session_id
        on_update, _ = answering(ledger, session, False)
        outcome = ledger.send(session, "[[write notes.md]]", on_update=on_update)
        assert outcome.ok and outcome.text.startswith("I could not write")
        denials = events_of(ledger, session, ResponseReceived)[-1].permission_denials
        assert [d["tool_name"] for d in denials] == ["Write"]
        assert "not that file" in outcome.tool_calls[0]["output"]


def test_a_cold_run_s_deadline_pauses_while_the_caller_decides(tmp_path: Path) -> None:
    with open_ledger(tmp_path, timeout=1.0) as ledger:
        session = ledger.create_session().session_id
        on_update, _ = answering(ledger, session, True, delay=1.5)
        outcome = ledger.send(session, "[[write notes.md]]", on_update=on_update)
        assert outcome.ok and outcome.text.startswith("I wrote")


def test_interrupting_a_cold_run_that_waits_for_a_decision_denies_and_cancels(
        tmp_path: Path) -> None:
    with open_ledger(tmp_path) as ledger:
        session = ledger.create_session().session_id
        asked = threading.Event()

        def on_update(update: Any) -> None:
            if isinstance(update, PermissionRequestUpdate):
                asked.set()

        finished: list[Any] = []
        sender = threading.Thread(target=lambda: finished.append(ledger.send(
            session, "[[write notes.md]]", on_update=on_update)))
        sender.start()
        assert asked.wait(30)
        assert ledger.interrupt(session)
        sender.join(30)
        decided = events_of(ledger, session, PermissionDecided)
        assert [(d.allow, d.decided_by) for d in decided] == [(False, "chatledger")]
        assert finished and events_of(ledger, session, RunFailed)[-1].reason in (
            "cancelled",)


def test_a_consumer_that_leaves_a_cold_run_denies(tmp_path: Path) -> None:
    manager = SessionManager(path=str(tmp_path / "ledger"), agent_command=STANDIN,
                             tool_approvals=True, allowed_tools="Read")

    async def scenario() -> str:
        session = (await manager.create_session()).session_id
        updates = manager.send_message(session, "[[write notes.md]]")
        async with contextlib.aclosing(updates):
            async for update in updates:
                if update["type"] == "permission_request":
                    break  # the websocket closed
        return session

    session = asyncio.run(scenario())
    decided = wait_until(lambda: [r.event for r in manager.runtime.events(session)
                                  if isinstance(r.event, PermissionDecided)], 10)
    assert [(d.allow, d.decided_by) for d in decided] == [(False, "chatledger")]
    asyncio.run(manager.stop())


def test_without_tool_approvals_a_cold_run_is_as_before(tmp_path: Path) -> None:
    with open_ledger(tmp_path, tool_approvals=False) as ledger:
        session = ledger.create_session().session_id
        outcome = ledger.send(session, "[[write notes.md]]")
        assert outcome.text.startswith("I could not write")
        assert "--input-format" not in events_of(ledger, session, RunStarted)[0].argv
        assert not events_of(ledger, session, PermissionRequested)


def test_power_mode_never_asks(tmp_path: Path) -> None:
    with open_ledger(tmp_path) as ledger:
        session = ledger.create_session(mode="power").session_id
        outcome = ledger.send(session, "[[write notes.md]]")
        assert outcome.ok and outcome.text.startswith("I wrote")
        argv = events_of(ledger, session, RunStarted)[0].argv
        assert "--permission-prompt-tool" not in argv and "--input-format" not in argv


def control_argv() -> tuple[str, ...]:
    return (*STANDIN_ARGV, "--print", "--output-format", "stream-json", "--input-format",
            "stream-json", "--verbose", "--allowedTools=Read", "--permission-prompt-tool",
            "stdio")


def test_the_runner_denies_requests_nobody_can_answer_and_ends_stdin_after_result() -> None:
    spec = RunSpec(argv=control_argv(), prompt="[[write notes.md]]", timeout=30,
                   input_format="stream-json")
    started = time.monotonic()
    outcome = run_turn(spec, STANDIN_DIALECT)
    assert outcome.ok and outcome.text.startswith("I could not write"), outcome
    assert outcome.exit_code == 0
    assert time.monotonic() - started < 20  # stdin EOF after result: the agent exited


def test_the_runner_hands_requests_to_its_handler_with_an_answerer() -> None:
    seen: list[tuple[str, str]] = []

    def on_permission(message: dict[str, Any], answerer: PermissionAnswerer) -> None:
        request = message["request"]
        seen.append((request["subtype"], request["tool_name"]))
        threading.Timer(0.1, lambda: answerer.answer_permission(
            message["request_id"], True, updated_input=request["input"])).start()

    spec = RunSpec(argv=control_argv(), prompt="[[write notes.md]]", timeout=30,
                   input_format="stream-json")
    outcome = run_turn(spec, STANDIN_DIALECT, on_permission=on_permission,
                       turn_id="11111111-2222-3333-4444-555555555555")
    assert seen == [("can_use_tool", "Write")]
    assert outcome.ok and outcome.text.startswith("I wrote"), outcome


def test_a_send_without_on_update_denies_at_once(tmp_path: Path) -> None:
    with open_ledger(tmp_path) as ledger:
        session = ledger.create_session().session_id
        outcome = ledger.send(session, "[[write notes.md]]")
        assert outcome.ok and outcome.text.startswith("I could not write")
        decided = events_of(ledger, session, PermissionDecided)
        assert [(d.allow, d.decided_by) for d in decided] == [(False, "chatledger")]
        assert "without on_update" in decided[0].message


def test_closing_the_ledger_denies_and_records_an_open_request(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path)
    session = ledger.create_session().session_id
    asked = threading.Event()
    sender = threading.Thread(target=lambda: ledger.send(
        session, "[[write notes.md]]",
        on_update=lambda u: asked.set() if isinstance(u, PermissionRequestUpdate) else None))
    sender.start()
    assert asked.wait(30)
    ledger.close()
    sender.join(30)
    with open_ledger(tmp_path) as reopened:
        decided = events_of(reopened, session, PermissionDecided)
        assert [(d.allow, d.message) for d in decided] == [
            (False, "chatledger is shutting down")]
        assert events_of(reopened, session, RunFailed)[-1].reason == "cancelled"


def test_claude_argv_for_cold_approvals_keeps_stdin_for_stream_json() -> None:
    user = build_argv(["claude"], mode="user", allowed_tools=["Read"], permission_prompt=True)
    assert user[user.index("--input-format") + 1] == "stream-json"
    assert user[user.index("--permission-prompt-tool") + 1] == "stdio"
    power = build_argv(["claude"], mode="power", allowed_tools=[], permission_prompt=True)
    assert "--input-format" not in power and "--permission-prompt-tool" not in power
    with pytest.raises(ValueError, match="stream-json"):
        build_argv(["claude"], mode="user", allowed_tools=[], output_format="text",
                   permission_prompt=True)
