"""End to end with the real `claude` binary: chatledger's async SessionManager and sync Ledger
drive Claude Code against a fake Messages API on 127.0.0.1, and the ledger must hold exactly
what happened: answers, tool calls with inputs and results, canvas modifications (from an MCP
tool result and from the answer text), failure reasons and messages, cost and usage, the
agent's own session id, and continuity through `--resume` with a recorded fallback when claude
has lost its session. The fake API records what claude sent, so the tests also check the
prompt (history, canvas state) as the model would have seen it.

Each claude run costs ~0.6-1.3 s of start-up; the file runs in well under two minutes.
Skipped (with the reason) only when claude is absent and npm cannot install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from claude_harness import CANVAS_TOOL, CLEARED_VARIABLES, ClaudeHarness, require_claude, wait_until
from fake_anthropic import FakeAnthropic, ReceivedRequest, error, text, tool_use

from chatledger import SessionManager
from chatledger.actors.updates import AnyTurnUpdate, TextDeltaUpdate
from chatledger.events import (
    AgentSessionLost,
    CanvasModified,
    Event,
    MessageSent,
    ResponseReceived,
    RunFailed,
    RunStarted,
    TranscriptRestored,
)
from chatledger.ledger import Ledger

pytestmark = [pytest.mark.claude, pytest.mark.timeout(90)]

REPOSITORY = Path(__file__).resolve().parent.parent


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def claude_binary() -> str:
    """The real claude binary (installed into the npm cache if need be), else a skip."""
    return require_claude(pytest.skip, pytest.fail)


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    """A fresh fake Messages API for one test, closed afterwards (and after 120 s at most)."""
    with FakeAnthropic(lifetime=120) as fake:
        yield fake


@pytest.fixture
def claude(
    claude_binary: str, fake_api: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ClaudeHarness]:
    """A scratch HOME and cwd for claude, pointed at the fake API; leftovers killed after."""
    for name in CLEARED_VARIABLES:  # chatledger passes our environment on to the agent
        monkeypatch.delenv(name, raising=False)
    harness = ClaudeHarness(claude_binary, fake_api, tmp_path / "claude")
    yield harness
    harness.kill_leftovers()


def events_of(ledger: Ledger, session_id: str) -> list[Event]:
    """The session's events, envelopes dropped."""
    return [recorded.event for recorded in ledger.events(session_id)]


def kinds(events: list[Event]) -> list[str]:
    """Event class names, in order."""
    return [type(event).__name__ for event in events]


def only(events: list[Event], kind: type[Any]) -> Any:
    """The one event of a kind."""
    found = [event for event in events if isinstance(event, kind)]
    assert len(found) == 1, kinds(events)
    return found[0]


def events_of_type(events: list[Event], kind: type[Any]) -> list[Any]:
    """The events of one kind."""
    return [event for event in events if isinstance(event, kind)]


def prompt_of(request: ReceivedRequest) -> str:
    """chatledger's prompt as the API received it: the last user text block."""
    return request.user_texts()[-1]


async def collect(manager: SessionManager, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Every item a turn yields."""
    return [item async for item in manager.send_message(*args, **kwargs)]


def run(coroutine: Any) -> Any:
    """Run a coroutine to its end on a fresh event loop."""
    return asyncio.run(coroutine)


# -- a plain turn, through the async manager ---------------------------------------------------


def test_a_turn_records_answer_cost_usage_and_agent_session(
    claude: ClaudeHarness, tmp_path: Path
) -> None:
    answer = "The mesh has 42 elements."
    claude.fake.script(text(answer, chunk_chars=5, input_tokens=31, output_tokens=9))

    async def scenario() -> tuple[str, list[dict[str, Any]]]:
        manager = SessionManager(config=claude.config(tmp_path / "ledger"))
        try:
            session = await manager.create_session(study_id="study-7")
            items = await collect(manager, session.session_id, "How many elements?",
                                  {"nodes": [{"id": "n1", "label": "Mesh"}]}, stream_deltas=True)
            return session.session_id, items
        finally:
            await manager.stop()

    session_id, items = run(scenario())
    deltas = [item["content"] for item in items if item["type"] == "text_delta"]
    assert len(deltas) > 1 and "".join(deltas) == answer  # streamed as it came
    assert [item["type"] for item in items if item["type"] != "text_delta"] == ["text", "done"]
    assert items[-2] == {"type": "text", "content": answer}
    assert items[-1] == {"type": "done", "tool_calls": []}

    with Ledger(config=claude.config(tmp_path / "ledger")) as ledger:
        events = events_of(ledger, session_id)
    assert kinds(events) == ["SessionCreated", "MessageSent", "RunStarted", "ResponseReceived"]
    started = only(events, RunStarted)
    assert started.argv[:2] == (claude.binary, "--print")
    assert "--include-partial-messages" in started.argv and "-" not in started.argv
    response = only(events, ResponseReceived)
    assert response.text == answer and response.exit_code == 0 and response.tool_calls == ()
    assert response.cost_usd is not None and response.cost_usd > 0
    assert response.usage is not None
    assert (response.usage["input_tokens"], response.usage["output_tokens"]) == (31, 9)
    assert response.agent_session_id is not None
    assert uuid.UUID(response.agent_session_id)
    assert [p.stem for p in claude.transcripts()] == [response.agent_session_id]

    # What the model saw: exactly one call, the mode, study, canvas state and message.
    [request] = claude.fake.model_calls()
    assert request.streaming
    prompt = prompt_of(request)
    assert "user mode" in prompt and "## Study\nstudy-7" in prompt
    assert '"label": "Mesh"' in prompt and prompt.rstrip().endswith("How many elements?")
    assert "## Conversation so far" not in prompt
    assert claude.processes() == []


def test_prompt_history_sends_earlier_turns_in_the_prompt(
    claude: ClaudeHarness, tmp_path: Path
) -> None:
    claude.fake.script(text("Noted, your name is Ada."), text("You are Ada."))
    with Ledger(config=claude.config(tmp_path / "ledger")) as ledger:
        session_id = ledger.create_session().session_id
        first = ledger.send(session_id, "My name is Ada.", canvas_state={"zoom": 2})
        second = ledger.send(session_id, "What is my name?", canvas_state={"zoom": 3})
        assert first.ok and second.ok, (first, second)
        events = events_of(ledger, session_id)
    assert [e.history_strategy for e in events if isinstance(e, RunStarted)] == ["prompt"] * 2
    assert not any(word.startswith("--resume") for e in events if isinstance(e, RunStarted)
               for word in e.argv)
    first_call, second_call = claude.fake.model_calls()
    prompt = prompt_of(second_call)
    assert "## Conversation so far\nuser: My name is Ada.\n\nassistant: Noted, your name is Ada." \
        in prompt
    assert '"zoom": 3' in prompt and '"zoom": 2' not in prompt
    # Each turn is a fresh claude session: the API saw no earlier turn outside the prompt.
    assert len(second_call.messages) == len(first_call.messages)
    answers = [e for e in events if isinstance(e, ResponseReceived)]
    assert answers[0].agent_session_id != answers[1].agent_session_id


def test_without_partial_messages_the_answer_arrives_as_one_piece(
    claude: ClaudeHarness, tmp_path: Path
) -> None:
    claude.fake.script(text("one two three four five", chunk_chars=4))
    updates: list[AnyTurnUpdate] = []
    with Ledger(config=claude.config(tmp_path / "ledger", partial_messages=False)) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "count", on_update=updates.append, stream_deltas=True)
        started = only(events_of(ledger, session_id), RunStarted)
    assert outcome.ok and outcome.text == "one two three four five"
    assert "--include-partial-messages" not in started.argv
    assert [u.content for u in updates if isinstance(u, TextDeltaUpdate)] == [outcome.text]


def test_text_output_format_records_the_plain_answer(claude: ClaudeHarness, tmp_path: Path) -> None:
    claude.fake.script(text("Plain answer ✓"))
    with Ledger(config=claude.config(tmp_path / "ledger", output_format="text")) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "hello")
        events = events_of(ledger, session_id)
    assert outcome.ok and outcome.text == "Plain answer ✓"
    started, response = only(events, RunStarted), only(events, ResponseReceived)
    assert started.argv[2:4] == ("--output-format", "text") and "--verbose" not in started.argv
    assert response.text == "Plain answer ✓" and response.agent_session_id is None


# -- tools and canvas modifications ------------------------------------------------------------


def test_an_mcp_tool_call_and_a_text_modification_are_recorded_and_streamed(
    claude: ClaudeHarness, tmp_path: Path
) -> None:
    from_tool = {"action": "add_node", "id": "n2", "label": "Lasteinleitung ⚙"}
    from_text = {"action": "connect", "from": "n1", "to": "n2"}
    claude.fake.script(
        tool_use(CANVAS_TOOL, {"modification": from_tool}, preface="Adding the node."),
        text("Added it and connected it:\n```json\n"
             + json.dumps({"modification": from_text}) + "\n```\nAlso "
             + json.dumps({"modification": from_tool}) + " as said."),
    )

    async def scenario() -> tuple[str, list[dict[str, Any]]]:
        manager = SessionManager(config=claude.config(tmp_path / "ledger", mcp=True))
        try:
            session = await manager.create_session()
            items = await collect(manager, session.session_id, "Add a load node", {"nodes": []})
            return session.session_id, items
        finally:
            await manager.stop()

    session_id, items = run(scenario())
    assert [item["type"] for item in items] == ["canvas_modification", "canvas_modification",
                                                "text", "done"]
    assert [items[0]["modification"], items[1]["modification"]] == [from_tool, from_text]
    [call] = items[-1]["tool_calls"]
    assert call["name"] == CANVAS_TOOL and call["input"] == {"modification": from_tool}
    assert call["output"] == {"applied": True, "modification": from_tool}

    # claude really called our MCP server, with the input the model gave.
    assert claude.mcp_calls() == [{"tool": "apply_canvas_change",
                                   "arguments": {"modification": from_tool}}]
    with Ledger(config=claude.config(tmp_path / "ledger")) as ledger:
        events = events_of(ledger, session_id)
    assert kinds(events) == ["SessionCreated", "MessageSent", "RunStarted", "CanvasModified",
                             "CanvasModified", "ResponseReceived"]
    assert [e.modification for e in events if isinstance(e, CanvasModified)] == [from_tool,
                                                                                from_text]
    response = only(events, ResponseReceived)
    [recorded_call] = response.tool_calls
    assert recorded_call.name == CANVAS_TOOL and not recorded_call.is_error
    assert recorded_call.input == {"modification": from_tool}
    assert recorded_call.output == {"applied": True, "modification": from_tool}
    assert recorded_call.tool_use_id.startswith("toolu_")
    assert response.usage is not None and response.usage["input_tokens"] == 50  # two API calls

    # The MCP config file lived in the ledger's private directory, 0600, and is gone now.
    started = only(events, RunStarted)
    config_path = Path(next(word.split("=", 1)[1] for word in started.argv
                            if word.startswith("--mcp-config=")))
    assert "--strict-mcp-config" in started.argv
    assert config_path.parent == tmp_path / "ledger" / "mcp"
    assert not config_path.exists()

    # The tool was offered in the first request (alwaysLoad) and its result went back.
    first, second = claude.fake.model_calls()
    assert CANVAS_TOOL in [tool.get("name") for tool in first.body.get("tools", [])]
    [result] = second.tool_results()
    assert json.loads(result["content"][0]["text"])["applied"] is True
    assert wait_until(lambda: claude.processes() == [], 5), claude.processes()


def test_the_mcp_config_file_is_private_while_the_turn_runs(
    claude: ClaudeHarness, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}

    def responder(request: ReceivedRequest) -> Any:
        for path in (tmp_path / "ledger" / "mcp").glob("*.json"):
            seen[path.name] = stat.S_IMODE(path.stat().st_mode)
        return text("ok")

    claude.fake.set_default(responder)
    with Ledger(config=claude.config(tmp_path / "ledger", mcp=True)) as ledger:
        session_id = ledger.create_session().session_id
        assert ledger.send(session_id, "hi").ok
    assert list(seen.values()) == [0o600]
    assert stat.S_IMODE((tmp_path / "ledger" / "mcp").stat().st_mode) == 0o700


def test_always_load_makes_claude_wait_for_a_slow_mcp_server(
    claude: ClaudeHarness, tmp_path: Path
) -> None:
    modification = {"action": "add_node", "id": "late"}
    claude.fake.script(tool_use(CANVAS_TOOL, {"modification": modification}), text("Done."))
    config = claude.config(tmp_path / "ledger", mcp=True, mcp_start_delay=0.5)
    with Ledger(config=config) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "add it")
    assert outcome.ok and outcome.canvas_modifications == [modification], outcome
    first = claude.fake.model_calls()[0]
    assert CANVAS_TOOL in [tool.get("name") for tool in first.body.get("tools", [])]
    assert claude.mcp_calls() == [{"tool": "apply_canvas_change",
                                   "arguments": {"modification": modification}}]
    assert wait_until(lambda: claude.processes() == [], 5), claude.processes()


def test_user_mode_denies_a_tool_outside_the_allow_list_and_power_mode_runs_it(
    claude: ClaudeHarness, tmp_path: Path
) -> None:
    marker = claude.workdir / "touched"
    command = {"command": f"touch {marker}", "description": "touch a file"}
    with Ledger(config=claude.config(tmp_path / "ledger")) as ledger:
        session_id = ledger.create_session().session_id
        claude.fake.script(tool_use("Bash", command), text("I could not."))
        denied = ledger.send(session_id, "touch it")
        assert denied.ok, denied
        [call] = denied.tool_calls
        assert call["name"] == "Bash" and call.get("is_error") is True and not marker.exists()

        ledger.switch_mode(session_id, "power")
        claude.fake.script(tool_use("Bash", command), text("Done."))
        allowed = ledger.send(session_id, "touch it")
        assert allowed.ok, allowed  # as root this needs IS_SANDBOX=1
        [call] = allowed.tool_calls
        assert call["name"] == "Bash" and not call.get("is_error") and marker.exists()
        runs = [e for e in events_of(ledger, session_id) if isinstance(e, RunStarted)]
    assert any(word.startswith("--allowedTools=") for word in runs[0].argv)
    assert "--dangerously-skip-permissions" in runs[1].argv
    assert not any(word.startswith("--allowedTools") for word in runs[1].argv)


# -- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "calls", "says"),
    [
        (400, 1, "API Error: 400 fake trouble 4f1c"),  # not retried
        (401, 2, "Failed to authenticate. API Error: 401 fake trouble 4f1c"),  # retried, too
        (500, 2, "API Error: 500 fake trouble 4f1c"),  # retried once (CLAUDE_CODE_MAX_RETRIES=1)
        (529, 2, "API Error: 529 fake trouble 4f1c"),
    ],
)
def test_an_api_error_becomes_run_failed_with_claudes_message(
    claude: ClaudeHarness, tmp_path: Path, status: int, calls: int, says: str
) -> None:
    claude.fake.set_default(error(status, "fake trouble 4f1c"))
    with Ledger(config=claude.config(tmp_path / "ledger")) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "hello")
        events = events_of(ledger, session_id)
        info = ledger.info(session_id)
    assert not outcome.ok and outcome.reason == "agent_error", outcome.error
    assert outcome.error is not None and says in outcome.error
    assert kinds(events) == ["SessionCreated", "MessageSent", "RunStarted", "RunFailed"]
    failed = only(events, RunFailed)
    assert failed.reason == "agent_error" and failed.exit_code == 1
    assert says in failed.message and str(status) in failed.message
    assert info is not None and info.failure_count == 1 and info.status == "idle"
    assert len(claude.fake.model_calls()) == calls


def test_a_broken_stream_falls_back_to_a_non_streaming_request(
    claude: ClaudeHarness, tmp_path: Path
) -> None:
    claude.fake.script(text("this stream breaks off", chunk_chars=4, break_after=2),
                       text("the whole answer"))
    with Ledger(config=claude.config(tmp_path / "ledger")) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "hello")
        response = only(events_of(ledger, session_id), ResponseReceived)
    assert outcome.ok and outcome.text == "the whole answer" == response.text
    assert [call.streaming for call in claude.fake.model_calls()] == [True, False]


def test_cancelling_mid_stream_records_cancelled_and_leaves_no_process(
    claude: ClaudeHarness, tmp_path: Path
) -> None:
    claude.fake.script(text("slow words " * 200, chunk_chars=8, delay=0.1))  # ~28 s

    async def scenario() -> tuple[str, list[int], list[dict[str, Any]]]:
        manager = SessionManager(config=claude.config(tmp_path / "ledger", mcp=True))
        try:
            session = await manager.create_session()
            items: list[dict[str, Any]] = []
            running: list[int] = []
            turn = manager.send_message(session.session_id, "talk slowly", stream_deltas=True)
            async with contextlib.aclosing(turn):
                async for item in turn:
                    items.append(item)
                    if item["type"] == "text_delta":
                        running = claude.processes()
                        break  # the websocket went away mid-answer: closing cancels the turn
            return session.session_id, running, items
        finally:
            await manager.stop()

    session_id, running, items = run(scenario())
    assert items[-1]["type"] == "text_delta" and items[-1]["content"].startswith("slow")
    assert len(running) >= 2  # claude and its MCP server were running mid-stream
    with Ledger(config=claude.config(tmp_path / "ledger")) as ledger:
        events = events_of(ledger, session_id)
        info = ledger.info(session_id)
    assert kinds(events) == ["SessionCreated", "MessageSent", "RunStarted", "RunFailed"]
    failed = only(events, RunFailed)
    assert failed.reason == "cancelled", failed
    assert failed.message == "Run cancelled while the agent was running"
    assert info is not None and info.status == "idle" and info.open_turn is None
    assert wait_until(lambda: claude.processes() == [], 5), claude.processes()
    assert len(claude.fake.model_calls()) == 1


def test_a_turn_over_its_deadline_is_recorded_as_a_timeout(
    claude: ClaudeHarness, tmp_path: Path
) -> None:
    claude.fake.script(text("slow " * 100, chunk_chars=5, delay=0.2))  # ~20 s
    config = claude.config(tmp_path / "ledger", timeout=2.5, kill_grace=0.5)
    with Ledger(config=config) as ledger:
        session_id = ledger.create_session().session_id
        outcome = ledger.send(session_id, "talk slowly", timeout=30)
        failed = events_of(ledger, session_id)[-1]
    assert not outcome.ok and outcome.reason == "timeout"
    assert isinstance(failed, RunFailed) and failed.reason == "timeout"
    assert failed.message == "Response timeout (2.5 seconds)"
    assert wait_until(lambda: claude.processes() == [], 5), claude.processes()


# -- size and encoding ---------------------------------------------------------------------------


def test_non_ascii_goes_through_unchanged_both_ways(claude: ClaudeHarness, tmp_path: Path) -> None:
    message = "Grüße aus Zürich — wie schwer ist 東京タワー? 🗼 Ωμέγα"
    answer = "Ça pèse ≈ 4 000 t — 東京タワー 🗼; naïve «quotes» and emoji 👩‍🔬"
    claude.fake.script(text(answer, chunk_chars=3))

    async def scenario() -> tuple[str, list[dict[str, Any]]]:
        manager = SessionManager(config=claude.config(tmp_path / "ledger"))
        try:
            session = await manager.create_session(study_id="Studie-ä")
            return session.session_id, await collect(manager, session.session_id, message,
                                                     {"titel": "Übersicht ✓"})
        finally:
            await manager.stop()

    session_id, items = run(scenario())
    assert items[0] == {"type": "text", "content": answer}
    prompt = prompt_of(claude.fake.model_calls()[0])
    assert prompt.rstrip().endswith(message) and "Übersicht ✓" in prompt and "Studie-ä" in prompt
    with Ledger(config=claude.config(tmp_path / "ledger")) as ledger:
        events = events_of(ledger, session_id)
    assert only(events, MessageSent).text == message
    assert only(events, ResponseReceived).text == answer


def test_one_megabyte_answers_are_recorded_whole_and_go_back_in_the_prompt(
    claude: ClaudeHarness, tmp_path: Path
) -> None:
    # Three turns, because the loss this guards against (claude exiting before a full stdout
    # pipe drained, fixed by a 1 MiB pipe) struck about every second 1 MB answer.
    answers = [
        "".join(f"turn {turn} line {i:06d}: Knotenverschiebung ✓ {'x' * 40}\n"
                for i in range(15_000)).strip()
        for turn in (1, 2, 3)
    ]
    assert all(len(answer.encode()) > 1_000_000 for answer in answers)
    claude.fake.script(*(text(answer, chunk_chars=64 * 1024) for answer in answers))
    with Ledger(config=claude.config(tmp_path / "ledger")) as ledger:
        session_id = ledger.create_session().session_id
        outcomes = [ledger.send(session_id, f"Print table {turn}") for turn in (1, 2, 3)]
        recorded = events_of_type(events_of(ledger, session_id), ResponseReceived)
    assert [o.ok for o in outcomes] == [True] * 3, [o.error for o in outcomes]
    assert [o.text for o in outcomes] == answers == [r.text for r in recorded]
    # The next prompts carried the earlier megabytes to claude on stdin, and on to the API.
    third_prompt = prompt_of(claude.fake.model_calls()[2])
    assert answers[0] in third_prompt and answers[1] in third_prompt


# -- continuity through claude's own sessions ----------------------------------------------------


def test_resume_strategy_lets_claude_carry_the_conversation(
    claude: ClaudeHarness, tmp_path: Path
) -> None:
    claude.fake.script(
        tool_use(CANVAS_TOOL, {"modification": {"action": "add_node", "id": "a"}}),
        text("Noted, Ada. Node added."),
        text("You are Ada."),
    )
    config = claude.config(tmp_path / "ledger", mcp=True, history_strategy="resume")
    with Ledger(config=config) as ledger:
        session_id = ledger.create_session().session_id
        first = ledger.send(session_id, "My name is Ada. Add node a.", canvas_state={"v": 1})
        second = ledger.send(session_id, "What is my name?", canvas_state={"v": 2})
        assert first.ok and second.ok, (first, second)
        events = events_of(ledger, session_id)
        info = ledger.info(session_id)
    runs = [e for e in events if isinstance(e, RunStarted)]
    answers = [e for e in events if isinstance(e, ResponseReceived)]
    agent_session = answers[0].agent_session_id
    assert agent_session is not None
    assert runs[0].history_strategy == "prompt" and runs[0].resume_agent_session_id is None
    assert runs[1].history_strategy == "resume" and runs[1].resume_agent_session_id == agent_session
    assert runs[1].argv[-1] == f"--resume={agent_session}"
    assert answers[1].agent_session_id == agent_session  # claude continues the same session
    assert info is not None and info.agent_session_id == agent_session
    # Mirrored (the default with this strategy), and the file claude kept was complete.
    assert runs[0].argv[-1] == runs[1].argv[-2] == "--session-mirror"
    assert not events_of_type(events, TranscriptRestored)

    # claude itself sent the first turn (tool call and result included); our prompt did not.
    third_call = claude.fake.model_calls()[2]
    everything = third_call.all_text()
    assert "My name is Ada. Add node a." in everything and "Noted, Ada. Node added." in everything
    assert third_call.tool_results() and '"applied": true' in everything
    prompt = prompt_of(third_call)
    assert "## Conversation so far" not in prompt
    assert '"v": 2' in prompt and prompt.rstrip().endswith("What is my name?")


def test_a_lost_agent_session_falls_back_to_prompt_history_and_says_so(
    claude: ClaudeHarness, tmp_path: Path
) -> None:
    claude.fake.script(text("Noted, Ada."), text("Hello again, Ada."))
    # Without the mirror the ledger has no transcript to write back: claude has lost it.
    config = claude.config(tmp_path / "ledger", history_strategy="resume",
                           transcript_mirror="off")
    with Ledger(config=config) as ledger:
        session_id = ledger.create_session().session_id
        assert ledger.send(session_id, "My name is Ada.").ok
        lost = ledger.info(session_id).agent_session_id
        for transcript in claude.transcripts():  # as claude's 30-day clean-up would
            transcript.unlink()
        outcome = ledger.send(session_id, "Who am I?")
        events = events_of(ledger, session_id)
        info = ledger.info(session_id)
    assert outcome.ok and outcome.text == "Hello again, Ada.", outcome
    assert kinds(events)[4:] == ["MessageSent", "RunStarted", "AgentSessionLost", "RunStarted",
                                 "ResponseReceived"]
    attempt_1, attempt_2 = [e for e in events[5:] if isinstance(e, RunStarted)]
    assert (attempt_1.turn, attempt_1.attempt, attempt_1.history_strategy) == (2, 1, "resume")
    assert attempt_1.resume_agent_session_id == lost
    assert (attempt_2.turn, attempt_2.attempt, attempt_2.history_strategy) == (2, 2, "prompt")
    assert not any(word.startswith("--resume") for word in attempt_2.argv)
    session_lost = only(events, AgentSessionLost)
    assert session_lost.turn == 2 and session_lost.agent_session_id == lost
    assert "No conversation found with session ID" in session_lost.message
    # The failed resume never reached the API; the fallback carried the history in the prompt.
    first_call, second_call = claude.fake.model_calls()
    assert "## Conversation so far\nuser: My name is Ada.\n\nassistant: Noted, Ada." \
        in prompt_of(second_call)
    assert len(events_of_type(events, MessageSent)) == 2
    new_session = only(events[5:], ResponseReceived).agent_session_id
    assert new_session not in (None, lost)
    assert info is not None and info.agent_session_id == new_session and info.turn_count == 2


def test_a_deleted_local_transcript_is_resumed_from_the_ledger(
    claude: ClaudeHarness, tmp_path: Path
) -> None:
    claude.fake.script(text("Noted, Ada."), text("You are Ada."))
    config = claude.config(tmp_path / "ledger", history_strategy="resume")
    with Ledger(config=config) as ledger:
        session_id = ledger.create_session().session_id
        assert ledger.send(session_id, "My name is Ada.").ok
        agent_session = ledger.info(session_id).agent_session_id
        [transcript] = claude.transcripts()
        transcript.unlink()  # as claude's 30-day clean-up would
        outcome = ledger.send(session_id, "Who am I?")
        events = events_of(ledger, session_id)
        assert ledger.verify().ok
    assert outcome.ok and outcome.text == "You are Ada.", outcome
    assert kinds(events)[-4:] == ["MessageSent", "RunStarted", "TranscriptRestored",
                                  "ResponseReceived"]
    restored = only(events, TranscriptRestored)
    assert (restored.turn, restored.agent_session_id, restored.reason) == (
        2, agent_session, "missing")
    assert not events_of_type(events, AgentSessionLost)
    assert only(events[-4:], ResponseReceived).agent_session_id == agent_session
    resumed = claude.fake.model_calls()[1]
    assert "My name is Ada." in resumed.all_text() and "Noted, Ada." in resumed.all_text()
    assert "## Conversation so far" not in prompt_of(resumed)  # claude carried it, not us


def test_a_session_goes_on_on_another_node_with_claude_seeing_the_first_turn(
    claude: ClaudeHarness, claude_binary: str, tmp_path: Path
) -> None:
    claude.fake.script(
        tool_use(CANVAS_TOOL, {"modification": {"action": "add_node", "id": "a"}}),
        text("Noted: pomegranate. Node added."),
        text("You said pomegranate."),
    )
    ledger_path = tmp_path / "ledger"
    node_b = ClaudeHarness(claude_binary, claude.fake, tmp_path / "node-b")
    node_b.workdir = claude.workdir  # the same project, another machine's HOME
    try:
        with Ledger(config=claude.config(ledger_path, mcp=True,
                                         history_strategy="resume")) as node_a:
            session_id = node_a.create_session().session_id
            assert node_a.send(session_id, "Remember pomegranate. Add node a.").ok
        assert not node_b.transcripts()
        with Ledger(config=node_b.config(ledger_path, mcp=True,
                                         history_strategy="resume")) as ledger:
            outcome = ledger.send(session_id, "Which word did I ask you to remember?")
            events = events_of(ledger, session_id)
            assert ledger.verify().ok
        assert outcome.ok and outcome.text == "You said pomegranate.", outcome
        restored = only(events, TranscriptRestored)
        assert restored.turn == 2 and restored.reason == "missing"
        assert not events_of_type(events, AgentSessionLost)
        # claude on node b sent turn 1 (tool call and result included) from the restored file.
        second_node_call = claude.fake.model_calls()[-1]
        everything = second_node_call.all_text()
        assert "Remember pomegranate. Add node a." in everything
        assert "Noted: pomegranate. Node added." in everything
        assert second_node_call.tool_results() and '"applied": true' in everything
        assert "## Conversation so far" not in prompt_of(second_node_call)
        assert len(node_b.transcripts()) == 1
    finally:
        node_b.kill_leftovers()


def test_resumed_sessions_survive_reopening_the_ledger(claude: ClaudeHarness, tmp_path: Path) -> None:
    claude.fake.script(text("First answer."), text("Second answer."))
    config = claude.config(tmp_path / "ledger", history_strategy="resume")
    with Ledger(config=config) as ledger:
        session_id = ledger.create_session().session_id
        assert ledger.send(session_id, "first").ok
    with Ledger(config=config) as ledger:  # a restarted backend
        assert ledger.send(session_id, "second").ok
        runs = events_of_type(events_of(ledger, session_id), RunStarted)
    assert runs[-1].history_strategy == "resume"
    assert "First answer." in claude.fake.model_calls()[1].all_text()


# -- the admin CLI -------------------------------------------------------------------------------


def cli_has_send() -> bool:
    """Whether `python -m chatledger send` exists yet (the CLI is written separately)."""
    try:
        finished = subprocess.run([sys.executable, "-m", "chatledger", "send", "--help"],
                                  capture_output=True, timeout=30, check=False, cwd=REPOSITORY)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return finished.returncode == 0


def test_the_cli_sends_a_turn_through_real_claude(claude: ClaudeHarness, tmp_path: Path) -> None:
    if not cli_has_send():
        pytest.skip("`chatledger send` does not exist yet")
    modification = {"action": "add_node", "id": "cli"}
    claude.fake.script(tool_use(CANVAS_TOOL, {"modification": modification}),
                       text("Answer via the CLI ✓"))
    ledger_path = tmp_path / "ledger"
    with Ledger(config=claude.config(ledger_path)) as ledger:
        session_id = ledger.create_session().session_id
    canvas = tmp_path / "canvas.json"
    canvas.write_text(json.dumps({"nodes": ["Übersicht"]}), encoding="utf-8")
    environment = claude.environment()
    environment.update(
        CHATLEDGER_PATH=str(ledger_path),
        CHATLEDGER_AGENT_COMMAND=claude.binary,
        CHATLEDGER_AGENT_CWD=str(claude.workdir),
        CHATLEDGER_MCP_CONFIG=str(claude.mcp_config_file()),
        CHATLEDGER_TIMEOUT="60",
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "chatledger", *args], capture_output=True,
                              text=True, timeout=90, env=environment, cwd=tmp_path, check=False)

    sent = cli("send", session_id, "Hallo über die CLI", "--canvas", str(canvas), "--json")
    assert sent.returncode == 0, sent.stderr
    lines = [json.loads(line) for line in sent.stdout.splitlines() if line.strip()]
    assert [line["type"] for line in lines] == ["canvas_modification", "text", "done"]
    assert lines[0]["modification"] == modification
    assert lines[1]["content"] == "Answer via the CLI ✓"
    assert lines[2]["ok"] is True and lines[2]["tool_calls"][0]["name"] == CANVAS_TOOL

    claude.fake.set_default(error(400, "fake trouble 4f1c"))
    failed = cli("send", session_id, "and now?")
    assert failed.returncode == 1 and "API Error: 400 fake trouble 4f1c" in failed.stderr

    with Ledger(config=claude.config(ledger_path)) as ledger:
        events = events_of(ledger, session_id)
    assert kinds(events) == ["SessionCreated", "MessageSent", "RunStarted", "CanvasModified",
                             "ResponseReceived", "MessageSent", "RunStarted", "RunFailed"]
    assert events[1].canvas_state == {"nodes": ["Übersicht"]}
    assert events[-1].reason == "agent_error"
    prompt = prompt_of(claude.fake.model_calls()[0])
    assert prompt.rstrip().endswith("Hallo über die CLI") and "Übersicht" in prompt
    assert wait_until(lambda: claude.processes() == [], 5), claude.processes()


# -- the harness itself --------------------------------------------------------------------------


def test_the_harness_finds_the_binary_the_ci_script_installs(claude_binary: str) -> None:
    assert os.access(claude_binary, os.X_OK)
    finished = subprocess.run([claude_binary, "--version"], capture_output=True, text=True,
                              timeout=30, check=False)
    assert finished.returncode == 0 and "Claude Code" in finished.stdout


def test_concurrent_sessions_each_get_their_own_answer(claude: ClaudeHarness, tmp_path: Path) -> None:
    def responder(request: ReceivedRequest) -> Any:
        asked = prompt_of(request).rstrip().rsplit("\n", 1)[-1]
        return text(f"answer to {asked}")

    claude.fake.set_default(responder)
    with Ledger(config=claude.config(tmp_path / "ledger", max_runs=2)) as ledger:
        ids = [ledger.create_session().session_id for _ in range(2)]
        outcomes: dict[str, Any] = {}

        def send(session_id: str) -> None:
            outcomes[session_id] = ledger.send(session_id, f"question {session_id[:8]}")

        threads = [threading.Thread(target=send, args=(i,)) for i in ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    for session_id in ids:
        assert outcomes[session_id].text == f"answer to question {session_id[:8]}"
