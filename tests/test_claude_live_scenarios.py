"""Warm sessions with the real `claude` against the fake Messages API, in the situations a
live process meets: an interrupt while the API stalls or while claude backs off between
retries, tool requests put to the caller (allowed, denied, abandoned, interrupted, expired),
an MCP server inside the warm process, many sessions sharing a capped pool, a mode switch,
and the ends of a process (deadline, idle, passivation, SIGKILL, a lost transcript, the
ledger closing, a full pool). Each test checks what claude did and what chatledger recorded.
The 50-session test runs only with `-m slow`. Skipped when claude is absent."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from claude_harness import (
    CANVAS_SERVER,
    CANVAS_TOOL,
    CLEARED_VARIABLES,
    ClaudeHarness,
    require_claude,
    wait_until,
)
from fake_anthropic import Block, FakeAnthropic, ReceivedRequest, Reply, error, text, tool_use

from chatledger.actors.updates import (
    PermissionRequestUpdate,
    TextDeltaUpdate,
    TextUpdate,
    TurnDone,
)
from chatledger.events import (
    AgentProcessStarted,
    AgentProcessStopped,
    CanvasModified,
    ColdRunChosen,
    PermissionDecided,
    PermissionRequested,
    ResponseReceived,
    RunFailed,
)
from chatledger.ledger import Ledger
from chatledger.manager import SessionManager

pytestmark = [pytest.mark.claude, pytest.mark.timeout(180)]

INTERRUPT_BOUND_SECONDS = 5.0
"""A generous bound on interrupt -> RunFailed recorded (claude answers within ~25 ms)."""


@pytest.fixture(scope="module")
def claude_binary() -> str:
    return require_claude(pytest.skip, pytest.fail)


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(lifetime=170) as fake:
        yield fake


@pytest.fixture
def claude(claude_binary: str, fake_api: FakeAnthropic, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[ClaudeHarness]:
    for name in CLEARED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    harness = ClaudeHarness(claude_binary, fake_api, tmp_path / "claude")
    yield harness
    harness.kill_leftovers()


def open_ledger(claude: ClaudeHarness, tmp_path: Path, *, env: dict[str, str] | None = None,
                **settings: Any) -> Ledger:
    """A ledger whose warm sessions run this test's claude (`env` added to its variables)."""
    variables = {**claude.variables(), **(env or {})}
    return Ledger(config=claude.config(tmp_path / "ledger", warm_agents=True,
                                       agent_env=variables, **settings))


@pytest.fixture
def ledger(claude: ClaudeHarness, tmp_path: Path) -> Iterator[Ledger]:
    with open_ledger(claude, tmp_path) as opened:
        yield opened


def events_of(ledger: Ledger, session_id: str, kind: type) -> list[Any]:
    return [r.event for r in ledger.events(session_id) if isinstance(r.event, kind)]


def interrupt_when(ledger: Ledger, session_id: str, ready: Any, timings: dict[str, float],
                   ) -> threading.Thread:
    """Interrupt the session once `ready()` returns true (on a thread); the time is kept."""
    def wait_and_interrupt() -> None:
        if ready():
            timings["asked"] = time.monotonic()
            timings["interrupted"] = float(ledger.interrupt(session_id))

    thread = threading.Thread(target=wait_and_interrupt, daemon=True)
    thread.start()
    return thread


def assert_interrupted_and_alive(ledger: Ledger, fake: FakeAnthropic, session: str,
                                 outcome: Any, timings: dict[str, float]) -> float:
    """The turn ended cancelled soon after the interrupt, the same warm process takes the
    next turn, and that turn works; how long interrupt -> recorded took."""
    recorded_after = time.monotonic() - timings["asked"]
    assert timings["interrupted"] == 1.0
    assert (outcome.ok, outcome.reason) == (False, "cancelled")
    assert recorded_after < INTERRUPT_BOUND_SECONDS
    assert events_of(ledger, session, RunFailed)[-1].reason == "cancelled"
    fake.script(text("Back after the interrupt."))
    assert ledger.send(session, "are you there?").text == "Back after the interrupt."
    # claude survives a control interrupt: one process, never stopped
    assert len(events_of(ledger, session, AgentProcessStarted)) == 1
    assert events_of(ledger, session, AgentProcessStopped) == []
    return recorded_after


# -- 1. interrupt during a stall and during retry backoff -------------------------------------


@pytest.mark.parametrize("where", ["before_headers", "mid_stream"])
def test_an_interrupt_during_a_stall_ends_the_turn_and_the_warm_process_lives_on(
    ledger: Ledger, fake_api: FakeAnthropic, where: str,
) -> None:
    session = ledger.create_session().session_id
    ledger.send(session, "warm up")
    stall_after = None if where == "before_headers" else 1
    fake_api.script(text("This answer stalls and never ends.", chunk_chars=5, stall=60,
                         stall_after=stall_after))
    streamed = threading.Event()

    def on_update(update: Any) -> None:
        if isinstance(update, TextDeltaUpdate):
            streamed.set()

    def stalled() -> bool:
        # mid-stream: once the user saw the first words (claude drops a delta it had not
        # printed yet when the interrupt comes)
        return fake_api.wait_for_stall(30) and (where == "before_headers" or streamed.wait(30))

    timings: dict[str, float] = {}
    interrupt_when(ledger, session, stalled, timings)
    outcome = ledger.send(session, "stall please", on_update=on_update, stream_deltas=True)
    fake_api.release_stalls()
    took = assert_interrupted_and_alive(ledger, fake_api, session, outcome, timings)
    print(f"interrupt during a stall ({where}) -> recorded: {took * 1000:.0f} ms")
    assert events_of(ledger, session, RunFailed)[-1].partial_text == (
        "" if where == "before_headers" else "This ")


@pytest.mark.parametrize("status", [529, 500])
def test_an_interrupt_during_retry_backoff_ends_the_turn_without_more_retries(
    claude: ClaudeHarness, fake_api: FakeAnthropic, tmp_path: Path, status: int,
) -> None:
    # five retries, backing off 0.5 s, 1 s, 2 s, ...: the interrupt comes during the 1 s one
    with open_ledger(claude, tmp_path, env={"CLAUDE_CODE_MAX_RETRIES": "5"}) as ledger:
        session = ledger.create_session().session_id
        ledger.send(session, "warm up")
        before = len(fake_api.model_calls())
        fake_api.set_default(error(status, "overloaded, try again"))
        timings: dict[str, float] = {}
        interrupt_when(ledger, session,
                       lambda: len(fake_api.wait_for_model_calls(before + 2, 30)) >= before + 2,
                       timings)
        outcome = ledger.send(session, "this one meets errors")
        calls_at_the_end = len(fake_api.model_calls())
        fake_api.set_default(text("ok"))
        took = assert_interrupted_and_alive(ledger, fake_api, session, outcome, timings)
        # the interrupted turn was not retried behind our back: only the next turn called
        assert calls_at_the_end == before + 2
        assert len(fake_api.model_calls()) == before + 3
        print(f"interrupt during retry backoff ({status}) -> recorded: {took * 1000:.0f} ms")


# -- 2. tool approvals in a warm user-mode process -------------------------------------------


@pytest.fixture
def approving_ledger(claude: ClaudeHarness, tmp_path: Path) -> Iterator[Ledger]:
    with open_ledger(claude, tmp_path, tool_approvals=True) as opened:
        yield opened


def answering(ledger: Ledger, session: str, allow: bool) -> tuple[Any, list[Any]]:
    """An on_update that answers each permission request at once (from another thread)."""
    asked: list[Any] = []

    def on_update(update: Any) -> None:
        if isinstance(update, PermissionRequestUpdate):
            asked.append(update)
            threading.Thread(target=ledger.decide_permission, daemon=True, args=(
                session, update.request_id, allow),
                kwargs={"message": None if allow else "not in this folder",
                        "decided_by": "alice"}).start()

    return on_update, asked


def write_call(path: Path) -> Reply:
    return tool_use("Write", {"file_path": str(path), "content": "written by claude\n"},
                    preface="I will write the notes.")


@pytest.mark.parametrize("tool", ["Write", "Bash"])
def test_an_allowed_tool_request_runs_the_tool_in_the_warm_process(
    approving_ledger: Ledger, fake_api: FakeAnthropic, claude: ClaudeHarness, tool: str,
) -> None:
    ledger = approving_ledger
    session = ledger.create_session().session_id
    notes = claude.workdir / "notes.md"
    if tool == "Write":
        call = write_call(notes)
    else:  # outside the allow-list's Bash(python:*)
        call = tool_use("Bash", {"command": f"echo 'written by claude' > {notes}",
                                 "description": "Write the notes"})
    fake_api.script(call, text("I wrote the notes."))
    on_update, asked = answering(ledger, session, True)
    outcome = ledger.send(session, "write the notes", on_update=on_update)
    assert outcome.ok and outcome.text == "I wrote the notes."
    assert [a.tool for a in asked] == [tool]
    assert str(notes) in json.dumps(asked[0].input)
    assert notes.read_text() == "written by claude\n"
    requested = events_of(ledger, session, PermissionRequested)
    assert [(r.tool, r.request_id) for r in requested] == [(tool, asked[0].request_id)]
    assert requested[0].tool_use_id.startswith("toolu_")
    decided = events_of(ledger, session, PermissionDecided)
    assert [(d.allow, d.decided_by) for d in decided] == [(True, "alice")]
    assert events_of(ledger, session, ResponseReceived)[-1].permission_denials == ()
    assert len(events_of(ledger, session, AgentProcessStarted)) == 1


def test_a_denied_tool_request_reaches_claude_and_its_denial_is_recorded(
    approving_ledger: Ledger, fake_api: FakeAnthropic, claude: ClaudeHarness,
) -> None:
    ledger = approving_ledger
    session = ledger.create_session().session_id
    notes = claude.workdir / "notes.md"
    fake_api.script(write_call(notes), text("I could not write the notes."))
    on_update, asked = answering(ledger, session, False)
    outcome = ledger.send(session, "write the notes", on_update=on_update)
    assert outcome.ok and outcome.text == "I could not write the notes."
    assert not notes.exists()
    # claude sent our message back to the model as the tool's (failed) result
    results = fake_api.model_calls()[-1].tool_results()
    assert [r.get("is_error") for r in results] == [True]
    assert "not in this folder" in json.dumps(results)
    decided = events_of(ledger, session, PermissionDecided)
    assert [(d.allow, d.message, d.decided_by) for d in decided] == [
        (False, "not in this folder", "alice")]
    denials = events_of(ledger, session, ResponseReceived)[-1].permission_denials
    assert [(d["tool_name"], d["tool_use_id"]) for d in denials] == [
        ("Write", events_of(ledger, session, PermissionRequested)[0].tool_use_id)]


def test_a_consumer_that_leaves_at_a_tool_request_denies_it_and_the_process_lives_on(
    claude: ClaudeHarness, fake_api: FakeAnthropic, tmp_path: Path,
) -> None:
    config = claude.config(tmp_path / "ledger", warm_agents=True, tool_approvals=True)
    manager = SessionManager(config=config)
    notes = claude.workdir / "notes.md"
    fake_api.script(write_call(notes))

    async def leave_at_the_request() -> tuple[str, dict[str, Any]]:
        session = (await manager.create_session()).session_id
        updates = manager.send_message(session, "write the notes")
        async with contextlib.aclosing(updates):
            async for update in updates:
                if update["type"] == "permission_request":
                    return session, update  # the websocket closed
        raise AssertionError("no permission_request came")

    async def next_turn(session: str) -> list[dict[str, Any]]:
        return [update async for update in manager.send_message(session, "still there?")]

    try:
        session, asked = asyncio.run(leave_at_the_request())
        assert asked["tool"] == "Write" and asked["input"]["file_path"] == str(notes)
        recorded = lambda kind: [r.event for r in manager.runtime.events(session)  # noqa: E731
                                 if isinstance(r.event, kind)]
        decided = wait_until(lambda: recorded(PermissionDecided), 20)
        assert [(d.request_id, d.allow, d.decided_by) for d in decided] == [
            (asked["request_id"], False, "chatledger")]
        # the consumer's leaving also cancels its turn (as send_message documents)
        ended = wait_until(lambda: recorded(RunFailed) or recorded(ResponseReceived), 20)
        assert [(type(e), e.reason) for e in ended] == [(RunFailed, "cancelled")]
        # claude's interrupted result listed the denied call: kept with the RunFailed
        assert [d["tool_name"] for d in ended[0].permission_denials] == ["Write"]
        assert not notes.exists()
        fake_api.script(text("Yes, still here."))
        updates = asyncio.run(next_turn(session))
        assert [u["content"] for u in updates if u["type"] == "text"] == ["Yes, still here."]
        assert len(recorded(AgentProcessStarted)) == 1
        # claude kept the denial: the next turn sends it as the tool's failed result (with
        # our message, or claude's own when the interrupt overtook the deny)
        results = fake_api.model_calls()[-1].tool_results()
        assert [r.get("is_error") for r in results] == [True]
        assert any(said in str(results[0].get("content")) for said in (
            "the caller left before deciding", "doesn't want to proceed"))
    finally:
        asyncio.run(manager.stop())


# -- 3. an MCP server in a warm process -------------------------------------------------------


def mcp_servers(claude: ClaudeHarness) -> list[int]:
    """The canvas MCP servers running under this test's HOME."""
    found = []
    for pid in claude.processes():
        with contextlib.suppress(OSError):
            if CANVAS_SERVER.name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def test_an_mcp_server_in_a_warm_process_serves_every_turn_and_ends_with_it(
    claude: ClaudeHarness, fake_api: FakeAnthropic, tmp_path: Path,
) -> None:
    first = {"action": "add_node", "node": {"id": "n1", "label": "Design variable"}}
    second = {"action": "add_edge", "from": "n1", "to": "n2"}
    fake_api.script(tool_use(CANVAS_TOOL, {"modification": first}, preface="Adding the node."),
                    text("Added the node."),
                    tool_use(CANVAS_TOOL, {"modification": second}), text("Linked them."))
    with open_ledger(claude, tmp_path, mcp=True) as ledger:
        session = ledger.create_session().session_id
        one = ledger.send(session, "add a design variable")
        assert wait_until(lambda: len(mcp_servers(claude)) == 1, 5)
        two = ledger.send(session, "link it")
        assert (one.text, two.text) == ("Added the node.", "Linked them.")
        assert (one.canvas_modifications, two.canvas_modifications) == ([first], [second])
        assert [c["arguments"] for c in claude.mcp_calls()] == [{"modification": first},
                                                                 {"modification": second}]
        recorded = [(e.turn, e.modification) for e in events_of(ledger, session, CanvasModified)]
        assert recorded == [(1, first), (2, second)]
        calls = [c for e in events_of(ledger, session, ResponseReceived) for c in e.tool_calls]
        assert [(c.name, c.is_error) for c in calls] == [(CANVAS_TOOL, False)] * 2
        # one warm process, one MCP server, for both turns
        assert len(events_of(ledger, session, AgentProcessStarted)) == 1
        assert len(mcp_servers(claude)) == 1
    with Ledger(config=claude.config(tmp_path / "ledger")) as reopened:
        stopped = events_of(reopened, session, AgentProcessStopped)
    assert [(s.reason, s.exit_code, s.turns) for s in stopped] == [("shutdown", 0, 2)]
    assert wait_until(lambda: not claude.processes(), 5), f"left behind: {claude.processes()}"


# -- 4. many sessions sharing a capped pool ---------------------------------------------------

MARKER = re.compile(r"\[(s\d+) t(\d+)\]")


def answer_by_marker(request: ReceivedRequest) -> Reply:
    """Answer the newest `[sN tM]` marker of the request at once: "answer sN tM"."""
    found = MARKER.findall("\n".join(request.user_texts()))
    session, turn = found[-1] if found else ("?", "?")
    return text(f"answer {session} t{turn}")


class ProcessSampler:
    """Counts this test's agent processes (claude process groups with its HOME) every
    `interval` s on a thread."""

    def __init__(self, claude: ClaudeHarness, interval: float = 0.05) -> None:
        self.claude = claude
        self.interval = interval
        self.counts: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.counts.append(len(self.claude.agent_groups()))

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)


def run_many_sessions(claude: ClaudeHarness, fake: FakeAnthropic, tmp_path: Path, *,
                      sessions: int, cap: int, turns: int = 2) -> dict[str, Any]:
    """`turns` rounds of one turn in each of `sessions` warm sessions, `cap` at a time in a
    pool of `cap` warm processes; checks every turn and returns what was counted."""
    fake.set_default(answer_by_marker)
    started_at = time.monotonic()
    with open_ledger(claude, tmp_path, max_warm_agents=cap, max_runs=cap) as ledger, \
            ProcessSampler(claude) as sampler, ThreadPoolExecutor(cap) as senders:
        ids = [ledger.create_session().session_id for _ in range(sessions)]
        for turn in range(1, turns + 1):
            asked = {sid: senders.submit(ledger.send, sid, f"[s{n} t{turn}] go on")
                     for n, sid in enumerate(ids)}
            for n, sid in enumerate(ids):
                outcome = asked[sid].result(timeout=120)
                assert (outcome.ok, outcome.text) == (True, f"answer s{n} t{turn}"), outcome
        warm_at_the_end = len(ledger.runtime.warm.warm_sessions())
    took = time.monotonic() - started_at
    with Ledger(config=claude.config(tmp_path / "ledger")) as reopened:
        recorded = {sid: [r.event for r in reopened.events(sid)] for sid in ids}
    for events in recorded.values():  # no turn lost, none failed, none ran cold
        assert [e.turn for e in events if isinstance(e, ResponseReceived)] == list(
            range(1, turns + 1))
        assert not [e for e in events if isinstance(e, (RunFailed, ColdRunChosen))]
    # claude held each conversation across eviction: turn t's request carried turn t-1's answer
    for call in fake.model_calls():
        found = MARKER.findall("\n".join(call.user_texts()))
        session, turn = found[-1]
        if int(turn) > 1:
            assert f"answer {session} t{int(turn) - 1}" in call.all_text()
    everything = [e for events in recorded.values() for e in events]
    starts = [e for e in everything if isinstance(e, AgentProcessStarted)]
    stops = collections.Counter(e.reason for e in everything
                                if isinstance(e, AgentProcessStopped))
    assert set(stops) <= {"evicted", "shutdown"}
    assert stops["shutdown"] == warm_at_the_end <= cap
    assert stops["evicted"] == len(starts) - warm_at_the_end >= sessions - cap
    assert sum(1 for e in starts if any(w.startswith("--resume=") for w in e.argv)) \
        == len(starts) - sessions  # every respawn resumed claude's session
    assert sampler.counts and max(sampler.counts) <= cap, collections.Counter(sampler.counts)
    return {"seconds": took, "starts": len(starts), "evicted": stops["evicted"],
            "most_alive": max(sampler.counts), "samples": len(sampler.counts)}


def test_sessions_beyond_the_warm_cap_are_evicted_and_lose_no_turn(
    claude: ClaudeHarness, fake_api: FakeAnthropic, tmp_path: Path,
) -> None:
    counted = run_many_sessions(claude, fake_api, tmp_path, sessions=12, cap=4)
    print("12 sessions, cap 4:", counted)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fifty_sessions_share_ten_warm_processes_without_losing_a_turn(
    claude: ClaudeHarness, fake_api: FakeAnthropic, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    # about 60 s on 2 idle cores (100 claude start-ups): only when asked for with `-m slow`
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("50 warm sessions take about a minute: run with `-m slow`")
    counted = run_many_sessions(claude, fake_api, tmp_path, sessions=50, cap=10)
    print("50 sessions, cap 10:", counted)


# -- 5. a mode switch while warm --------------------------------------------------------------


def test_a_mode_switch_respawns_the_warm_process_with_resume_and_the_new_permissions(
    approving_ledger: Ledger, fake_api: FakeAnthropic, claude: ClaudeHarness,
) -> None:
    ledger = approving_ledger
    session = ledger.create_session().session_id
    fake_api.script(text("Remember the word albatross."))
    assert ledger.send(session, "remember a word").text == "Remember the word albatross."
    ledger.switch_mode(session, "power")
    notes = claude.workdir / "power.md"
    fake_api.script(write_call(notes), text("Written, albatross."))
    asked: list[Any] = []
    outcome = ledger.send(session, "write it down", on_update=lambda u: asked.append(u)
                          if isinstance(u, PermissionRequestUpdate) else None)
    assert outcome.ok and outcome.text == "Written, albatross."
    # power mode: the tool ran without asking anyone
    assert notes.read_text() == "written by claude\n" and asked == []
    assert events_of(ledger, session, PermissionRequested) == []
    # continuity: claude itself sent turn 1 in turn 2's first request
    turn_two = fake_api.model_calls()[-2]
    assert "albatross" in turn_two.all_text()
    stopped = events_of(ledger, session, AgentProcessStopped)
    assert [(s.reason, s.exit_code, s.turns) for s in stopped] == [("mode_switch", 0, 1)]
    first, second = events_of(ledger, session, AgentProcessStarted)
    agent_session = events_of(ledger, session, ResponseReceived)[0].agent_session_id
    assert "--permission-prompt-tool" in first.argv and "--dangerously-skip-permissions" \
        not in first.argv
    assert "--dangerously-skip-permissions" in second.argv
    assert "--permission-prompt-tool" not in second.argv
    assert f"--resume={agent_session}" in second.argv and second.turn == 2
    # recorded in order: the old process's stop and the new one's start come with turn 2
    kinds = [type(r.event).__name__ for r in ledger.events(session)]
    assert kinds[kinds.index("ModeSwitched"):] == [
        "ModeSwitched", "MessageSent", "RunStarted", "AgentProcessStopped",
        "AgentProcessStarted", "ResponseReceived"]


def test_a_switch_back_to_user_mode_puts_tools_to_the_caller_again(
    approving_ledger: Ledger, fake_api: FakeAnthropic, claude: ClaudeHarness,
) -> None:
    ledger = approving_ledger
    session = ledger.create_session(mode="power").session_id
    fake_api.script(text("Powerful."))
    ledger.send(session, "hello")
    ledger.switch_mode(session, "user")
    notes = claude.workdir / "user.md"
    fake_api.script(write_call(notes), text("Not written."))
    on_update, asked = answering(ledger, session, False)
    assert ledger.send(session, "write it", on_update=on_update).text == "Not written."
    assert [a.tool for a in asked] == ["Write"] and not notes.exists()
    assert "Powerful." in fake_api.model_calls()[-2].all_text()
    stopped = events_of(ledger, session, AgentProcessStopped)
    assert [s.reason for s in stopped] == ["mode_switch"]
    second = events_of(ledger, session, AgentProcessStarted)[1]
    assert "--dangerously-skip-permissions" not in second.argv
    assert any(w.startswith("--resume=") for w in second.argv)


# -- more of a warm process's life: deadlines, deaths, idleness, queues -----------------------


def test_a_stall_past_the_turn_deadline_times_out_and_the_process_lives_on(
    claude: ClaudeHarness, fake_api: FakeAnthropic, tmp_path: Path,
) -> None:
    with open_ledger(claude, tmp_path, timeout=3.0) as ledger:
        session = ledger.create_session().session_id
        ledger.send(session, "warm up")
        fake_api.script(text("Stalled for ever.", stall=60, stall_after=1, chunk_chars=7))
        began = time.monotonic()
        outcome = ledger.send(session, "stall please")
        took = time.monotonic() - began
        fake_api.release_stalls()
        assert (outcome.ok, outcome.reason) == (False, "timeout")
        assert 3.0 <= took < 3.0 + INTERRUPT_BOUND_SECONDS
        assert events_of(ledger, session, RunFailed)[-1].partial_text == "Stalled"
        fake_api.script(text("Awake again."))
        assert ledger.send(session, "hello?").text == "Awake again."
        assert len(events_of(ledger, session, AgentProcessStarted)) == 1


def test_a_process_killed_mid_turn_fails_the_turn_and_the_next_one_resumes(
    ledger: Ledger, fake_api: FakeAnthropic, claude: ClaudeHarness,
) -> None:
    session = ledger.create_session().session_id
    fake_api.script(text("Remember the word heron."))
    ledger.send(session, "first")
    assert wait_until(lambda: any("heron" in path.read_text(errors="replace")
                                  for path in claude.transcripts()), 10)
    fake_api.script(text("This answer stalls.", stall=60, stall_after=1, chunk_chars=5))
    pid = events_of(ledger, session, AgentProcessStarted)[0].pid
    streamed = threading.Event()

    def on_update(update: Any) -> None:
        if isinstance(update, TextDeltaUpdate):
            streamed.set()

    def kill_once_the_user_saw_text() -> None:
        if streamed.wait(30):
            os.killpg(pid, signal.SIGKILL)

    threading.Thread(target=kill_once_the_user_saw_text, daemon=True).start()
    outcome = ledger.send(session, "second", on_update=on_update, stream_deltas=True)
    fake_api.release_stalls()
    assert (outcome.ok, outcome.reason) == (False, "interrupted")
    assert events_of(ledger, session, RunFailed)[-1].partial_text == "This "
    fake_api.script(text("Heron, yes."))
    assert ledger.send(session, "what was the word?").text == "Heron, yes."
    assert "heron" in fake_api.model_calls()[-1].all_text()
    assert [s.reason for s in events_of(ledger, session, AgentProcessStopped)] == ["crashed"]
    second = events_of(ledger, session, AgentProcessStarted)[1]
    assert any(w.startswith("--resume=") for w in second.argv)


def test_an_idle_warm_process_is_closed_and_the_next_turn_resumes(
    claude: ClaudeHarness, fake_api: FakeAnthropic, tmp_path: Path,
) -> None:
    with open_ledger(claude, tmp_path, warm_idle_timeout=0.5) as ledger:
        session = ledger.create_session().session_id
        fake_api.script(text("Remember the word ibis."))
        ledger.send(session, "first")
        assert wait_until(lambda: events_of(ledger, session, AgentProcessStopped), 10)
        assert wait_until(lambda: not claude.agent_groups(), 5)
        fake_api.script(text("Ibis."))
        assert ledger.send(session, "the word?").text == "Ibis."
        assert "ibis" in fake_api.model_calls()[-1].all_text()
        stopped = events_of(ledger, session, AgentProcessStopped)
        assert [(s.reason, s.exit_code, s.turns) for s in stopped[:1]] == [("idle", 0, 1)]


def test_an_interrupt_ends_only_the_running_turn_and_the_queued_one_runs_warm(
    ledger: Ledger, fake_api: FakeAnthropic,
) -> None:
    session = ledger.create_session().session_id
    ledger.send(session, "warm up")
    fake_api.script(text("Slow and stalled.", stall=60, stall_after=1, chunk_chars=4),
                    text("The queued answer."))
    running: dict[str, Any] = {}
    first = threading.Thread(target=lambda: running.update(
        outcome=ledger.send(session, "the slow one")), daemon=True)
    first.start()
    assert fake_api.wait_for_stall(30)
    queued: queue.SimpleQueue[Any] = queue.SimpleQueue()
    ledger.runtime.send(session, "the queued one", queued.put)  # returns once it is queued
    assert ledger.interrupt(session)
    first.join(30)
    fake_api.release_stalls()
    assert (running["outcome"].ok, running["outcome"].reason) == (False, "cancelled")
    updates = [queued.get(timeout=30)]
    while not isinstance(updates[-1], TurnDone):
        updates.append(queued.get(timeout=30))
    assert updates[-1].ok
    assert [u.content for u in updates if isinstance(u, TextUpdate)] == ["The queued answer."]
    assert len(events_of(ledger, session, AgentProcessStarted)) == 1


def test_the_deadline_pauses_while_the_caller_decides_on_a_tool(
    claude: ClaudeHarness, fake_api: FakeAnthropic, tmp_path: Path,
) -> None:
    with open_ledger(claude, tmp_path, tool_approvals=True, timeout=2.0) as ledger:
        session = ledger.create_session().session_id
        notes = claude.workdir / "later.md"
        fake_api.script(write_call(notes), text("Written at last."))
        asked: list[Any] = []

        def on_update(update: Any) -> None:
            if isinstance(update, PermissionRequestUpdate):
                asked.append(update)
                threading.Timer(3.0, ledger.decide_permission, args=(
                    session, update.request_id, True)).start()

        outcome = ledger.send(session, "write it, slowly approved", on_update=on_update)
        assert (outcome.ok, outcome.text) == (True, "Written at last.")
        assert len(asked) == 1 and notes.exists()


def test_passivating_a_warm_session_closes_its_process_and_the_next_turn_resumes(
    ledger: Ledger, fake_api: FakeAnthropic, claude: ClaudeHarness,
) -> None:
    session = ledger.create_session().session_id
    fake_api.script(text("Remember the word egret."))
    ledger.send(session, "first")
    assert ledger.passivate(session)
    assert wait_until(lambda: not claude.agent_groups(), 5)
    fake_api.script(text("Egret."))
    assert ledger.send(session, "the word?").text == "Egret."
    assert "egret" in fake_api.model_calls()[-1].all_text()
    stopped = events_of(ledger, session, AgentProcessStopped)
    assert [(s.reason, s.exit_code) for s in stopped] == [("passivated", 0)]


@pytest.mark.parametrize("waiting_for", ["a stalled stream", "a tool decision"])
def test_closing_the_ledger_during_a_warm_turn_records_it_and_leaves_no_process(
    claude: ClaudeHarness, fake_api: FakeAnthropic, tmp_path: Path, waiting_for: str,
) -> None:
    ledger = open_ledger(claude, tmp_path, tool_approvals=True)
    session = ledger.create_session().session_id
    ledger.send(session, "warm up")
    asked = threading.Event()
    if waiting_for == "a stalled stream":
        fake_api.script(text("Never finished.", stall=60, stall_after=1, chunk_chars=5))
    else:
        fake_api.script(write_call(claude.workdir / "never.md"))
    updates: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def sink(update: Any) -> None:
        if isinstance(update, PermissionRequestUpdate):
            asked.set()
        updates.put(update)

    ledger.runtime.send(session, "and now wait", sink)
    assert fake_api.wait_for_stall(30) if waiting_for == "a stalled stream" else asked.wait(30)
    began = time.monotonic()
    ledger.close()
    took = time.monotonic() - began
    fake_api.release_stalls()
    print(f"closing during {waiting_for}: {took * 1000:.0f} ms")
    assert took < INTERRUPT_BOUND_SECONDS
    seen = []
    while not updates.empty():
        seen.append(updates.get())
    assert [(u.ok, u.reason) for u in seen if isinstance(u, TurnDone)] == [(False, "cancelled")]
    assert wait_until(lambda: not claude.processes(), 5), claude.processes()
    with Ledger(config=claude.config(tmp_path / "ledger")) as reopened:
        kinds = [type(r.event).__name__ for r in reopened.events(session)]
        assert kinds[-2:] == ["RunFailed", "AgentProcessStopped"] or \
            kinds[-2:] == ["AgentProcessStopped", "RunFailed"], kinds
        assert [s.reason for s in events_of(reopened, session, AgentProcessStopped)] == [
            "shutdown"]
        # a tool request left open is closed in the record too: denied by chatledger
        requested = events_of(reopened, session, PermissionRequested)
        decided = events_of(reopened, session, PermissionDecided)
        assert [(d.request_id, d.allow, d.decided_by) for d in decided] == [
            (r.request_id, False, "chatledger") for r in requested]


def test_a_process_killed_while_a_tool_request_waits_closes_the_request(
    approving_ledger: Ledger, fake_api: FakeAnthropic, claude: ClaudeHarness,
) -> None:
    ledger = approving_ledger
    session = ledger.create_session().session_id
    ledger.send(session, "warm up")
    fake_api.script(write_call(claude.workdir / "never.md"))
    pid = events_of(ledger, session, AgentProcessStarted)[0].pid
    asked: list[Any] = []

    def on_update(update: Any) -> None:
        if isinstance(update, PermissionRequestUpdate):
            asked.append(update)
            os.killpg(pid, signal.SIGKILL)

    outcome = ledger.send(session, "write it", on_update=on_update)
    assert (outcome.ok, outcome.reason) == (False, "interrupted") and len(asked) == 1
    # the request is not left open, in the record or for a late answer
    decided = events_of(ledger, session, PermissionDecided)
    assert [(d.request_id, d.allow, d.decided_by) for d in decided] == [
        (asked[0].request_id, False, "chatledger")]
    assert not ledger.decide_permission(session, asked[0].request_id, True)
    fake_api.script(text("Fine."))
    assert ledger.send(session, "go on").text == "Fine."


def test_an_interrupt_while_a_tool_request_waits_denies_it_and_ends_the_turn(
    approving_ledger: Ledger, fake_api: FakeAnthropic, claude: ClaudeHarness,
) -> None:
    ledger = approving_ledger
    session = ledger.create_session().session_id
    fake_api.script(write_call(claude.workdir / "never.md"))
    asked: list[Any] = []

    def on_update(update: Any) -> None:
        if isinstance(update, PermissionRequestUpdate):
            asked.append(update)
            threading.Thread(target=ledger.interrupt, args=(session,), daemon=True).start()

    outcome = ledger.send(session, "write it", on_update=on_update)
    assert (outcome.ok, outcome.reason) == (False, "cancelled") and len(asked) == 1
    decided = events_of(ledger, session, PermissionDecided)
    assert [(d.allow, d.message, d.decided_by) for d in decided] == [
        (False, "the turn was interrupted", "chatledger")]
    denials = events_of(ledger, session, RunFailed)[-1].permission_denials
    assert [d["tool_use_id"] for d in denials] == [
        events_of(ledger, session, PermissionRequested)[0].tool_use_id]
    assert not (claude.workdir / "never.md").exists()
    fake_api.script(text("Fine."))
    assert ledger.send(session, "go on").text == "Fine."
    assert len(events_of(ledger, session, AgentProcessStarted)) == 1


def test_a_tool_request_nobody_answers_is_denied_after_permission_timeout(
    claude: ClaudeHarness, fake_api: FakeAnthropic, tmp_path: Path,
) -> None:
    with open_ledger(claude, tmp_path, tool_approvals=True, permission_timeout=1.0) as ledger:
        session = ledger.create_session().session_id
        fake_api.script(write_call(claude.workdir / "never.md"), text("Nobody answered."))
        began = time.monotonic()
        asked: list[PermissionRequestUpdate] = []  # a consumer that sees and never answers

        def ignore(update: Any) -> None:
            if isinstance(update, PermissionRequestUpdate):
                asked.append(update)

        outcome = ledger.send(session, "write it", on_update=ignore)
        assert (outcome.ok, outcome.text) == (True, "Nobody answered.")
        assert len(asked) == 1
        assert 1.0 <= time.monotonic() - began < 1.0 + INTERRUPT_BOUND_SECONDS
        decided = events_of(ledger, session, PermissionDecided)
        assert [(d.allow, d.decided_by) for d in decided] == [(False, "chatledger")]
        denials = events_of(ledger, session, ResponseReceived)[-1].permission_denials
        assert [d["tool_name"] for d in denials] == ["Write"]


def test_a_warm_session_whose_transcript_is_gone_goes_on_with_prompt_history(
    ledger: Ledger, fake_api: FakeAnthropic, claude: ClaudeHarness,
) -> None:
    session = ledger.create_session().session_id
    fake_api.script(text("Remember the word crane."))
    ledger.send(session, "first")
    assert wait_until(lambda: any("crane" in path.read_text(errors="replace")
                                  for path in claude.transcripts()), 10)
    os.killpg(events_of(ledger, session, AgentProcessStarted)[0].pid, signal.SIGKILL)
    # chatledger notices a death at the pipe's end, some 0.1 s after the process is gone
    assert wait_until(lambda: not ledger.runtime.warm._agents[session].agent.alive, 10)
    for transcript in claude.transcripts():
        transcript.unlink()
    fake_api.script(text("Crane."))
    assert ledger.send(session, "what was the word?").text == "Crane."
    last = fake_api.model_calls()[-1].all_text()
    assert "## Conversation so far" in last and "crane" in last  # chatledger's own history
    kinds = [type(r.event).__name__ for r in ledger.events(session)]
    assert kinds[kinds.index("ResponseReceived") + 1:] == [
        "MessageSent", "RunStarted", "AgentProcessStopped", "ColdRunChosen",
        "AgentSessionLost", "RunStarted", "AgentProcessStarted", "ResponseReceived"]
    assert events_of(ledger, session, ColdRunChosen)[0].reason == "initialize_failed"
    fake_api.script(text("Still crane."))
    assert ledger.send(session, "again?").text == "Still crane."
    assert "crane" in fake_api.model_calls()[-1].all_text()


def test_an_api_error_fails_a_warm_turn_and_the_process_takes_the_next_one(
    ledger: Ledger, fake_api: FakeAnthropic,
) -> None:
    session = ledger.create_session().session_id
    ledger.send(session, "warm up")
    fake_api.script(error(400, "the fake refuses this request"))
    outcome = ledger.send(session, "this one is refused")
    assert (outcome.ok, outcome.reason) == (False, "agent_error")
    assert "the fake refuses this request" in (outcome.error or "")
    fake_api.script(text("Accepted."))
    assert ledger.send(session, "and this one?").text == "Accepted."
    assert len(events_of(ledger, session, AgentProcessStarted)) == 1
    received = events_of(ledger, session, ResponseReceived)
    assert received[1].cost_usd == pytest.approx(
        received[1].process_cost_usd - received[0].process_cost_usd)


def test_two_tool_requests_of_one_answer_are_decided_each_on_its_own(
    approving_ledger: Ledger, fake_api: FakeAnthropic, claude: ClaudeHarness,
) -> None:
    ledger = approving_ledger
    session = ledger.create_session().session_id
    kept, refused = claude.workdir / "kept.md", claude.workdir / "refused.md"
    calls = tuple(Block(type="tool_use", name="Write", id=f"toolu_{name}_0000000000000000",
                        input={"file_path": str(path), "content": "written by claude\n"})
                  for name, path in (("kept", kept), ("refused", refused)))
    fake_api.script(Reply(blocks=calls, stop_reason="tool_use"), text("One of two."))
    asked: list[Any] = []

    def on_update(update: Any) -> None:
        if isinstance(update, PermissionRequestUpdate):
            asked.append(update)
            allow = update.input["file_path"] == str(kept)
            threading.Thread(target=ledger.decide_permission, daemon=True, args=(
                session, update.request_id, allow), kwargs={"decided_by": "alice"}).start()

    outcome = ledger.send(session, "write both", on_update=on_update)
    assert (outcome.ok, outcome.text) == (True, "One of two.")
    assert kept.exists() and not refused.exists()
    assert sorted(a.input["file_path"] for a in asked) == sorted([str(kept), str(refused)])
    decided = {d.request_id: d.allow for d in events_of(ledger, session, PermissionDecided)}
    assert decided == {a.request_id: a.input["file_path"] == str(kept) for a in asked}
    denials = events_of(ledger, session, ResponseReceived)[-1].permission_denials
    assert [d["tool_use_id"] for d in denials] == ["toolu_refused_0000000000000000"]


def test_a_turn_finding_every_warm_process_busy_runs_cold_and_says_so(
    claude: ClaudeHarness, fake_api: FakeAnthropic, tmp_path: Path,
) -> None:
    with open_ledger(claude, tmp_path, max_warm_agents=1, max_runs=2) as ledger:
        busy, other = (ledger.create_session().session_id for _ in range(2))
        fake_api.script(text("Held up.", stall=60, stall_after=1, chunk_chars=4))
        held: dict[str, Any] = {}
        holder = threading.Thread(target=lambda: held.update(
            outcome=ledger.send(busy, "hold the only warm process")), daemon=True)
        holder.start()
        assert fake_api.wait_for_stall(30)
        fake_api.script(text("Answered cold."))
        assert ledger.send(other, "and me?").text == "Answered cold."
        fake_api.release_stalls()
        holder.join(30)
        assert held["outcome"].text == "Held up."
        chosen = events_of(ledger, other, ColdRunChosen)
        assert [c.reason for c in chosen] == ["pool_full"]
        assert events_of(ledger, other, AgentProcessStarted) == []
        assert len(events_of(ledger, busy, AgentProcessStarted)) == 1
